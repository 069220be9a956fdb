"""Bad input and reruns (issue 18): every mistake named, nothing lost, nothing silently wrong.

One test (or a few) per item of the issue, through the CLI in-process (``lana.cli.main``) where the
user meets it, so that the wording and the exit code are what is checked.
"""

import json
import logging

import pytest
import torch

from lana.cli import main
from lana.cli.options import EXIT_BAD_INPUT, EXIT_INFEASIBLE
from lana.plan import Plan, solve_library


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def _solved(tiny_library, tmp_path_factory):
    path, _ = tiny_library
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    solve_library(path, "0.7x").save(out)
    return path, out


@pytest.fixture
def plan_file(_solved):
    """(library, a good plan.json, a fresh copy of its content to edit) of the tiny library."""
    path, out = _solved
    return path, out, json.loads(out.read_text())


def _edited(tmp_path, data: dict, name: str = "bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# -- 1. assemble validates the plan before any work ---------------------------------------------------


def test_a_plan_missing_a_layer_is_refused_naming_the_layer(plan_file, tmp_path, capsys):
    library, _, data = plan_file
    first = next(iter(data["choices"]))
    del data["choices"][first]
    out = tmp_path / "student"
    rc, _, err = _run(capsys, "assemble", library, "--plan", _edited(tmp_path, data), "--out", out)
    assert rc == EXIT_BAD_INPUT and f"no choice for layer(s) {first}" in err and "lana assemble: error:" in err
    assert not out.exists()


def test_a_plan_for_another_teacher_is_refused(plan_file, tmp_path, capsys):
    library, _, data = plan_file
    rc, _, err = _run(
        capsys, "assemble", library, "--plan", _edited(tmp_path, {**data, "model": "resnet50"}), "--out", tmp_path / "s"
    )
    assert rc == EXIT_BAD_INPUT and "a plan for 'resnet50', the library's teacher is 'resnet10t'" in err


def test_a_plan_without_choices_or_not_json_gets_a_sentence_not_a_traceback(plan_file, tmp_path, capsys):
    library, _, data = plan_file
    del data["choices"]
    rc, _, err = _run(capsys, "assemble", library, "--plan", _edited(tmp_path, data), "--out", tmp_path / "s")
    assert rc == EXIT_BAD_INPUT and "the plan lacks choices" in err and "lana solve" in err
    text = tmp_path / "text.json"
    text.write_text("this is not json")
    rc, _, err = _run(capsys, "assemble", library, "--plan", text, "--out", tmp_path / "s")
    assert rc == EXIT_BAD_INPUT and "is not a plan: not valid JSON" in err
    rc, _, err = _run(capsys, "assemble", library, "--plan", tmp_path / "missing.json", "--out", tmp_path / "s")
    assert rc == EXIT_BAD_INPUT and "no plan file" in err


def test_every_problem_of_a_plan_is_named_in_one_message(plan_file, tmp_path, capsys):
    library, _, data = plan_file
    layers = list(data["choices"])
    data["choices"] = {**{layer: "teacher" for layer in layers[1:]}, layers[1]: "ir_k9_e9", "nosuch.layer": "id"}
    rc, _, err = _run(capsys, "assemble", library, "--plan", _edited(tmp_path, data), "--out", tmp_path / "s")
    assert rc == EXIT_BAD_INPUT
    assert "nosuch.layer" in err and f"no choice for layer(s) {layers[0]}" in err and "ir_k9_e9" in err


def test_a_plan_with_stale_predictions_is_assembled_with_the_librarys(plan_file, tmp_path, capsys, caplog):
    library, _, data = plan_file
    stale = {**data, "predicted_latency_ms": 1e6, "predicted_drop": -5.0}
    out = tmp_path / "student"
    with caplog.at_level(logging.WARNING):
        rc, _, _ = _run(capsys, "assemble", library, "--plan", _edited(tmp_path, stale), "--out", out)
    assert rc == 0 and "predictions differ" in caplog.text
    saved = Plan.load(out / "plan.json")
    assert saved.predicted_latency_ms == pytest.approx(data["predicted_latency_ms"])
    assert saved.predicted_drop == pytest.approx(data["predicted_drop"])


# -- 2. a rebuild onto a complete library -------------------------------------------------------------


def test_build_onto_a_complete_library_is_a_no_op_and_other_settings_need_restart(tiny_build, tmp_path):
    from lana.library import Library
    from lana.pipeline import BuildConfig, add_latency_table, build

    out = tmp_path / "lib.h5"
    build(BuildConfig(**tiny_build), out)
    add_latency_table(out, "cpu-b2", threads=1, rounds=1)  # a table added later by `lana latency`
    before = out.read_bytes()
    again = build(BuildConfig(**tiny_build), out)
    assert again.reused and out.read_bytes() == before  # nothing redone, nothing rewritten
    other = BuildConfig(**{**tiny_build, "seed": 1})
    with pytest.raises(ValueError, match="complete library built with other settings.*seed.*--restart"):
        build(other, out)
    assert out.read_bytes() == before
    build(other, out, restart=True)
    library = Library(out)
    assert library.config["seed"] == 1 and set(library.tables) == {"cpu-b1", "cpu-b2"}  # the later table kept


def test_cli_build_says_it_had_nothing_to_do(tiny_library, tiny_build, capsys):
    path, _ = tiny_library
    b = tiny_build
    rc, out, _ = _run(
        capsys, "build", "--model", b["model"], "--img-size", b["img_size"], "--space", b["space"],
        "--max-steps", b["max_steps"], "--batch-size", b["batch_size"], "--limit", b["limit"],
        "--score-images", b["score_images"], "--device", "cpu", "--tables", "cpu-b1", "--latency-rounds", 1,
        "--threads", 1, "--out", path,
    )  # fmt: skip
    assert rc == 0 and "already complete with these settings" in out and "nothing to do" in out


# -- 3. a failed start leaves nothing behind ----------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [({"model": "not_a_model"}, "unknown timm model 'not_a_model'"), ({"img_size": 7}, "--img-size 7 is smaller")],
)
def test_a_bad_model_or_image_size_fails_before_a_work_directory_exists(tiny_build, tmp_path, change, message):
    from lana.pipeline import BuildConfig, build

    out = tmp_path / "lib.h5"
    with pytest.raises(ValueError, match=message):
        build(BuildConfig(**{**tiny_build, **change}), out)
    assert not out.exists() and not out.with_name("lib.h5.work").exists()


def test_candidates_and_build_word_an_unknown_model_alike(tmp_path, capsys):
    _, _, candidates = _run(capsys, "candidates", "--model", "not_a_model")
    _, _, build = _run(capsys, "build", "--model", "not_a_model", "--out", tmp_path / "lib.h5", "--limit", 64)
    assert "unknown timm model 'not_a_model'" in candidates and "unknown timm model 'not_a_model'" in build
    rc, _, err = _run(capsys, "candidates", "--model", "resnet10t", "--img-size", 7)
    assert rc == EXIT_BAD_INPUT and "total stride 32" in err


# -- 4. budgets ---------------------------------------------------------------------------------------


def test_a_budget_without_unit_is_refused_and_says_both_readings(plan_file, capsys):
    library, _, _ = plan_file
    rc, _, err = _run(capsys, "solve", library, "--budget", "3.2")
    assert rc == EXIT_BAD_INPUT and "has no unit: write 3.2ms" in err and "3.2x" in err


def test_a_negative_budget_is_bad_input_not_an_unknown_flag(plan_file, capsys):
    library, _, _ = plan_file
    rc, _, err = _run(capsys, "solve", library, "--budget", "-1x")
    assert rc == EXIT_BAD_INPUT and "must be positive" in err


def test_an_extra_budget_on_an_unknown_table_names_the_table(plan_file, capsys):
    library, _, _ = plan_file
    rc, _, err = _run(capsys, "solve", library, "--budget", "0.7x", "--extra-budget", "nosuch=0.5x")
    assert rc == EXIT_BAD_INPUT and "nosuch" in err and "its tables are cpu-b1" in err


def test_the_printed_plan_shows_the_predicted_and_the_measured_teacher(plan_file, capsys):
    from lana.library import Library

    library, _, _ = plan_file
    rc, out, _ = _run(capsys, "solve", library, "--budget", "0.7x")
    measured = Library(library).tables["cpu-b1"]["teacher_ms"]
    assert rc == 0 and "0.700x of the teacher's predicted" in out and f"measured whole {measured:.4f} ms" in out


def test_a_build_of_a_random_teacher_warns(tiny_build, tmp_path, caplog):
    from lana.pipeline import BuildConfig, build

    with caplog.at_level(logging.WARNING):
        build(
            BuildConfig(**{**tiny_build, "max_steps": 1, "skip_score": True, "skip_latency": True}), tmp_path / "l.h5"
        )
    assert "randomly initialised teacher" in caplog.text


# -- 5. errors: one style, no bad advice --------------------------------------------------------------


def test_unreadable_checkpoints_say_what_they_are_and_never_suggest_weights_only_false(tmp_path):
    from lana.teacher import CheckpointError, load_state_file

    text = tmp_path / "notckpt.pt"
    text.write_text("hello")
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 16)
    whole = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), whole)  # a pickled module, not a state dict
    for path, what in ((text, "not a file written by torch.save"), (noise, "not a file written by torch.save"),
                       (whole, "pickled objects besides tensors")):  # fmt: skip
        with pytest.raises(CheckpointError) as error:
            load_state_file(path)
        assert what in str(error.value) and "weights_only" not in str(error.value)
        assert "torch.save(model.state_dict()" in str(error.value)


def test_an_infeasible_budget_has_its_own_exit_code(plan_file, capsys):
    library, _, _ = plan_file
    rc, _, err = _run(capsys, "solve", library, "--budget", "0.01x")
    assert rc == EXIT_INFEASIBLE == 4 and "lana solve: infeasible:" in err


def test_version_and_exit_codes_in_help(capsys):
    from lana import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"lana {__version__}"
    with pytest.raises(SystemExit):
        main(["solve", "--help"])
    assert "4 the budget is infeasible" in " ".join(capsys.readouterr().out.split())


def test_candidates_defaults_to_the_image_size_build_uses():
    from lana.cli import build_parser
    from lana.cli.options import img_size

    parser = build_parser()
    build = parser.parse_args(["build", "--out", "x.h5"])
    # both unset: candidates then uses 32, and so does build on its default data set, Fashion-MNIST
    assert parser.parse_args(["candidates"]).img_size is None and build.img_size is None and img_size(build) == 32
    assert parser.parse_args(["correlate", "lib.h5"]).device == "auto"


# -- 8. housekeeping ----------------------------------------------------------------------------------


def test_ctrl_c_in_the_first_steps_saves_a_checkpoint_that_the_rerun_resumes(tiny_build, tmp_path, monkeypatch, caplog):
    import lana.distill as distill
    from lana.pipeline import BuildConfig, build

    real, calls = distill._step, []

    def interrupted(run, chunk, names, step, warmup, images):
        calls.append(step)
        if step == 2 and len(calls) == 3:  # Ctrl-C while the third step runs, long before a timed save
            raise KeyboardInterrupt
        return real(run, chunk, names, step, warmup, images)

    monkeypatch.setattr(distill, "_step", interrupted)
    config = BuildConfig(**{**tiny_build, "max_steps": 4, "skip_score": True, "skip_latency": True})
    out = tmp_path / "lib.h5"
    with pytest.raises(KeyboardInterrupt):
        build(config, out)
    saved = list((tmp_path / "lib.h5.work").glob("chunk_*.ckpt.pt"))
    assert len(saved) == 1 and torch.load(saved[0], weights_only=True)["step"] == 2
    with caplog.at_level(logging.INFO, logger="lana.distill"):
        build(config, out)
    assert "resuming at step 2" in caplog.text


def test_fashion_mnist_is_not_downloaded_unasked(tmp_path, monkeypatch):
    import lana.data as data

    monkeypatch.setattr(data, "fashion_mnist_dirs", lambda: [tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    monkeypatch.delenv("LANA_DOWNLOAD", raising=False)
    import torchvision.datasets

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded without LANA_DOWNLOAD=1")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_download)
    with pytest.raises(data.DataNotFoundError, match="LANA_DOWNLOAD=1"):
        data.load_dataset("fashion-mnist", "test", 32)


def test_pretrained_goes_offline_at_once_when_the_hub_is_unreachable(monkeypatch):
    from huggingface_hub import constants

    import lana.teacher as teacher

    seen = []

    def fake_create(name, num_classes, pretrained=False, in_chans=3):
        seen.append(constants.HF_HUB_OFFLINE)
        raise OSError("no network")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(teacher, "_hub_reachable", lambda timeout_s=2.0: False)
    monkeypatch.setattr(teacher, "create_model", fake_create)
    with pytest.raises(RuntimeError, match="pass --checkpoint"):
        teacher.load_teacher("resnet10t", 10, pretrained=True)
    assert seen == [True] and constants.HF_HUB_OFFLINE is False  # offline for that call only


def test_nothing_here_unpickles(tmp_path):
    """The pickled module above is refused before any of its code could run."""
    from lana.teacher import CheckpointError, load_state_file

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle code ran')",))

    path = tmp_path / "evil.pt"
    torch.save({"weight": Boom()}, path)  # a torch.save file whose unpickling would run code
    with pytest.raises(CheckpointError, match="pickled objects besides tensors"):
        load_state_file(path)
