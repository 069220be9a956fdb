"""Int8 candidates (issue 10, item 3): spec names, the space, an int8 build on CPU, reloading,
the ILP mixing precisions, the int8 student (fine-tune float, quantize, save, load, export)."""

import copy
import json

import numpy as np
import pytest
import torch
from helpers import one_thread  # noqa: F401 (autouse: tiny convs, 1 thread)

from lana.candidates import INT8_SUFFIX, estimate_cost, float_parent, int8_spec, is_int8, is_quantized, space_for
from lana.plan import solve_library

TABLES = ("cpu-b1", "cpu-b8")  # b8, not b64: the tiny test is about what runs, not how fast
FLOAT_TINY = ("ir_k3_e1", "dw_k3", "conv_k3", "basic_w0.25")  # the "tiny" space


@pytest.fixture(scope="module")
def int8_library(tiny_build, tmp_path_factory):
    """(path, BuildConfig) of a complete tiny library built with int8 twins, timed on two cpu-b* tables."""
    from lana.pipeline import BuildConfig, build

    config = BuildConfig(**{**tiny_build, "tables": TABLES, "int8": True})
    out = tmp_path_factory.mktemp("int8") / "tiny_int8.h5"
    build(config, out, keep_work=True)
    return out, config


@pytest.fixture(scope="module")
def int8_context(int8_library):
    from lana.context import context_from_library

    return context_from_library(int8_library[0])


def _forced_int8_plan(path):
    """The best plan that runs every layer in int8 (every float candidate excluded)."""
    return solve_library(path, "10x", table="cpu-b8", exclude=("teacher", "id", *FLOAT_TINY))


def test_int8_spec_names_round_trip_and_id_has_no_twin():
    assert int8_spec("ir_k3_e3") == "ir_k3_e3" + INT8_SUFFIX == "ir_k3_e3_int8"
    assert is_int8("teacher_int8") and not is_int8("teacher")
    assert float_parent("ir_k3_e3_int8") == "ir_k3_e3" and float_parent("dw_k3") == "dw_k3"
    for bad in ("id", "ir_k3_e3_int8"):
        with pytest.raises(ValueError, match="no int8 twin"):
            int8_spec(bad)
    with pytest.raises(ValueError, match="id_int8"):
        float_parent("id_int8")


def test_space_for_int8_lists_a_twin_of_every_float_spec_but_id():
    from helpers import timm_model

    _, layers = timm_model("resnet10t", 32)
    for layer in layers:
        floats = space_for(layer, "tiny")
        both = space_for(layer, "tiny", int8=True)
        assert both[: len(floats)] == floats
        assert both[len(floats) :] == [s + "_int8" for s in floats if s != "id"]
        assert "id_int8" not in both
        for spec in both[len(floats) :]:  # costs and modules are the float parent's
            assert estimate_cost(spec, layer).macs == estimate_cost(float_parent(spec), layer).macs
    assert "id" in space_for(layers[0], "tiny")  # so the id_int8 check above is not vacuous


def test_int8_build_refuses_cuda_and_onnxruntime_tables_before_any_work(tiny_build, tmp_path):
    from lana.meters import check_int8_target
    from lana.pipeline import BuildConfig, build

    for tables in (("cpu-ort-b1",), ("cpu-b1", "cuda-b64")):
        with pytest.raises(ValueError, match="--int8 needs --device cpu and cpu-b\\* tables"):
            build(BuildConfig(**{**tiny_build, "tables": tables, "int8": True}), tmp_path / "x.h5")
    with pytest.raises(ValueError, match="device 'cuda'"):
        check_int8_target("cuda", ("cpu-b1",))
    assert not (tmp_path / "x.h5.work").exists()  # refused before the work directory was made
    check_int8_target("cpu", ("cpu-b1", "cpu-torch-b64"))  # what works passes


def test_int8_library_scores_and_times_every_int8_candidate(int8_library):
    from lana.library import read_info

    path, _ = int8_library
    info = read_info(path)
    assert info["complete"] is True and info["config"]["int8"] is True
    for layer in info["layers"]:
        candidates = {c["spec"]: c for c in layer["candidates"]}
        twins = [s for s in candidates if is_int8(s)]
        assert set(twins) == {s + "_int8" for s in candidates if not is_int8(s) and s != "id"}
        for spec in twins:
            cand = candidates[spec]
            assert all(np.isfinite(v) for v in cand["scores"].values())
            for table in TABLES:
                assert np.isfinite(cand["latency_ms"][table]) and cand["latency_ms"][table] > 0
            # not distilled: it carries its parent's loss, and no weights of its own
            assert cand["distill_loss"] == candidates[float_parent(spec)]["distill_loss"]
    # report int8 vs float on cpu-b8 (timing noise on a shared CPU: shown, not asserted)
    for layer in info["layers"]:
        lat = {c["spec"]: c["latency_ms"]["cpu-b8"] for c in layer["candidates"]}
        print(layer["name"], ", ".join(f"{s} {lat[s]:.3f}/{lat[s + '_int8']:.3f} ms" for s in ("teacher", *FLOAT_TINY)))


def test_reloaded_int8_candidate_is_the_one_scored_and_timed(int8_library, int8_context):
    """Rebuilt as the build did (teacher from the seed, weights from the work directory,
    calibration on the same images), and from the library file: the same int8 module."""
    from lana.calibration import CalibrationSet
    from lana.context import LibraryContext
    from lana.data import load_dataset
    from lana.distill import load_chunk_weights
    from lana.library import read_info
    from lana.score import score_layer
    from lana.teacher import load_teacher
    from lana.train import predict_logits

    path, config = int8_library
    torch.manual_seed(config.seed)
    as_built = LibraryContext.for_space(
        load_teacher(config.model, 10),
        config.img_size,
        config.space,
        config.max_macs_ratio,
        int8=True,
        calibration=CalibrationSet.of(vars(config)),
    )
    work = path.with_name(path.name + ".work")
    for k in range(len(list(work.glob("chunk_*.weights.pt")))):
        as_built.weights.update(load_chunk_weights(work, k))
    li, spec = 1, "ir_k3_e1_int8"
    reloaded = int8_context.load(li, spec)
    assert is_quantized(reloaded)
    x = torch.randn(8, *int8_context.layers[li].in_shape)
    assert torch.equal(as_built.load(li, spec)(x), reloaded(x))
    # and its score, computed again with the reloaded module, is the stored one
    score_set = load_dataset(config.dataset, "score", config.img_size, seed=config.seed, limit=config.score_images)
    teacher_logits = predict_logits(int8_context.teacher, score_set, 256, "cpu")
    (again,) = score_layer(int8_context.teacher, int8_context.layers[li], [reloaded], score_set, teacher_logits)
    stored = next(c for c in read_info(path)["layers"][li]["candidates"] if c["spec"] == spec)["scores"]
    assert again["kl"] == pytest.approx(stored["kl"], rel=1e-5, abs=1e-7)
    assert again["top1_drop"] == stored["top1_drop"]


def test_quantized_candidate_is_close_to_its_float_parent(int8_context):
    from lana.candidates import quantization_error

    li = 0
    inputs = int8_context.calibration_inputs()[int8_context.layers[li].name]
    for spec in ("teacher", "ir_k3_e1"):
        error = quantization_error(int8_context.load(li, spec), int8_context.load(li, spec + "_int8"), inputs[-1:])
        print(f"{spec}_int8 at {int8_context.layers[li].name}: relative rms error {error.relative_rms:.4f}")
        assert 0 < error.relative_rms < 0.1  # int8, not float (> 0), and calibrated (a few %)


def test_inference_form_leaves_an_int8_module_as_it_is(int8_context):
    from lana.candidates import inference_form

    module = int8_context.load(0, "conv_k3_int8")
    shipped = int8_context.load_inference(0, "conv_k3_int8")
    x = torch.randn(2, *int8_context.layers[0].in_shape)
    assert is_quantized(shipped) and torch.equal(inference_form(module)(x), module(x))
    assert torch.equal(shipped(x), module(x))


def test_ilp_mixes_precisions_and_the_plan_assembles(int8_library, int8_context):
    from lana.student import assemble, int8_layers

    path, _ = int8_library
    free = solve_library(path, "0.6x", table="cpu-b8")
    print("free plan at 0.6x cpu-b8:", free.specs)
    forced = _forced_int8_plan(path)
    assert all(is_int8(spec) for _, spec in forced.choices) and len(forced.choices) == len(int8_context.layers)
    for plan in (free, forced):
        assert [layer for layer, _ in plan.choices] == [layer.name for layer in int8_context.layers]
        assert all(spec in specs for (_, spec), specs in zip(plan.choices, int8_context.specs))
    student = assemble(path, forced, ctx=int8_context)  # the student as scored: int8 where the plan says
    quantized = [name for name, module in student.named_modules() if is_quantized(module)]
    assert quantized == int8_layers(forced)
    assert torch.isfinite(student(torch.randn(2, 3, 32, 32))).all()


def test_int8_student_quantizes_saves_loads_and_scripts_int8(int8_library, int8_context, tmp_path):
    from lana.calibration import CalibrationSet
    from lana.export import export_all
    from lana.student import load_student, quantize_layers, save_student, student_from_context

    path, config = int8_library
    plan = _forced_int8_plan(path)
    float_student = student_from_context(int8_context, plan, float_only=True)
    assert not any(is_quantized(m) for m in float_student.modules())
    assert any(p.requires_grad for p in float_student.parameters())  # what fine-tuning needs
    images = CalibrationSet.of(vars(config)).images()
    student = quantize_layers(copy.deepcopy(float_student), plan, images)
    assert [n for n, m in student.named_modules() if is_quantized(m)] == [layer for layer, _ in plan.choices]
    with pytest.raises(ValueError, match="float student"):
        save_student(student, plan, int8_context, tmp_path / "bad")
    save_student(float_student, plan, int8_context, tmp_path)
    saved = json.loads((tmp_path / "student.json").read_text())
    assert saved["int8_layers"] == [layer for layer, _ in plan.choices] and saved["calibration"]["count"] == 256
    loaded = load_student(tmp_path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), student(x))
    results = export_all(student, (3, 32, 32), tmp_path)
    scripted = torch.jit.load(results["torchscript"].path)
    assert "quantized::" in str(scripted.inlined_graph)
    assert results["torchscript"].max_abs_diff < 1e-4
    onnx = results["onnx"]
    print("onnx export of the int8 student:", onnx.skipped or f"ok, max |diff| {onnx.max_abs_diff:.2e}")
    assert (onnx.skipped is None) == bool(onnx.path)
    if onnx.path:  # the int8 weights are in the file (as QDQ pairs), not expanded back to float
        import onnx as onnx_lib

        ops = {node.op_type for node in onnx_lib.load(onnx.path).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_accelerate_with_int8_fine_tunes_float_and_ships_int8(int8_library, tiny_build, tmp_path):
    from dataclasses import replace

    from lana.accelerate import AccelerateConfig, FinetuneConfig, accelerate, library_matches
    from lana.pipeline import BuildConfig
    from lana.plan import SolveOptions
    from lana.student import load_student

    path, _ = int8_library
    config = AccelerateConfig(
        build=BuildConfig(
            model="resnet10t", img_size=32, space="tiny", max_steps=2, limit=tiny_build["limit"],
            score_images=tiny_build["score_images"], device="cpu", latency_rounds=1, tables=TABLES, int8=True,
        ),
        budget="0.7x",
        solve=SolveOptions(table="cpu-b1"),
        library=str(path),
        finetune=FinetuneConfig(epochs=1, max_steps=2),
        eval_limit=100,
    )  # fmt: skip
    assert library_matches(path, config, None)
    assert not library_matches(path, replace(config, build=replace(config.build, int8=False)), None)
    report = accelerate(config, tmp_path)
    assert report["stages_s"]["build"] < 60  # the int8 library was reused
    layers = report["student"]["int8_layers"]
    assert layers == [layer for layer, spec in report["student"]["plan"]["choices"].items() if is_int8(spec)]
    print("accelerate int8 plan:", report["student"]["plan"]["choices"])
    loaded = load_student(tmp_path)
    assert [n for n, m in loaded.named_modules() if is_quantized(m)] == layers
    scripted = torch.jit.load(report["exports"]["torchscript"]["path"])
    assert ("quantized::" in str(scripted.inlined_graph)) == bool(layers)
