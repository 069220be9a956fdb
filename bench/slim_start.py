"""What the start of a slim candidate buys before any SGD step (issue 14): per block and whole network.

For each layer of a teacher, ``slim_w{W}`` is cut from its block and started four ways:

* ``sliced``: the teacher's weights of the kept channels, nothing else;
* ``bn_recal``: sliced, then the block's BN statistics re-estimated on the teacher's inputs;
* ``bias_only``: sliced, then the projection's bias refitted (least squares with the weights
  held at the teacher's: ``ridge`` → ∞, the bias free);
* ``least_squares``: the projection's weights and bias refitted (``lana.candidates.lsq``, what
  ``lana build`` does).

It prints the held-out normalised MSE of every block's output against the teacher's, and the
top-1 agreement with the teacher (and the top-1 on labels) of the network with *every* layer
slimmed, each way. Fit on the first ``--fit-images`` training images, measured on ``--eval-images``
test images. Example (the offline ImageNet Lite0, Fashion-MNIST at 64 px)::

    python3 -m bench.slim_start --model tf_efficientnet_lite0 --pretrained --img-size 64 --widths 0.75 0.5
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

STARTS = ("sliced", "bn_recal", "bias_only", "least_squares")


def _recalibrate(block: torch.nn.Module, inputs: torch.Tensor) -> None:
    """Re-estimate every BN's running statistics of ``block`` on ``inputs`` (cumulative average), then eval."""
    from lana.candidates.lsq import _moments_from

    _moments_from(block, inputs, batch=64)
    block.eval()


def _started(spec, layer, block, fit_inputs, how):
    from lana.candidates import build_candidate
    from lana.candidates.lsq import least_squares_start

    slim = build_candidate(spec, layer, teacher_block=block).eval()
    if how == "bn_recal":
        _recalibrate(slim, fit_inputs)
    elif how in ("bias_only", "least_squares"):
        try:
            least_squares_start(slim, block, fit_inputs, ridge=1e9 if how == "bias_only" else 1e-2)
        except ValueError:
            return None  # a block kind the fit does not cover
    return slim


def _nmse(model, block, x) -> float:
    with torch.no_grad():
        target = block(x)
        return float(((model(x) - target) ** 2).mean() / target.var())


def _inputs(teacher, names, images, norm, batch=128) -> dict[str, torch.Tensor]:
    from lana.data import to_model_input
    from lana.distill import capture_io

    out = {n: [] for n in names}
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = to_model_input(images[start : start + batch], "cpu", **norm)
            for name, (x_in, _) in capture_io(teacher, names, x, stop_early=False).items():
                out[name].append(x_in)
    return {n: torch.cat(v) for n, v in out.items()}


def _logits(model, images, norm, batch=128) -> torch.Tensor:
    from lana.data import to_model_input

    with torch.no_grad():
        return torch.cat(
            [model(to_model_input(images[s : s + batch], "cpu", **norm)) for s in range(0, len(images), batch)]
        )


def run(args) -> None:
    from lana.candidates import slim_specs
    from lana.data import load_dataset
    from lana.layers import find_layers, get_layer, replace_layer
    from lana.teacher import load_teacher
    from lana.train import model_norm

    torch.manual_seed(0)
    train = load_dataset(args.dataset, "train", args.img_size, limit=args.fit_images)
    test = load_dataset(args.dataset, "test", args.img_size, limit=args.eval_images)
    teacher = load_teacher(args.model, train.num_classes, checkpoint=args.checkpoint, pretrained=args.pretrained).eval()
    norm = model_norm(teacher)
    layers = find_layers(teacher, (3, args.img_size, args.img_size))
    names = [layer.name for layer in layers]
    fit, held = _inputs(teacher, names, train.images, norm), _inputs(teacher, names, test.images, norm)
    reference = _logits(teacher, test.images, norm)
    labels = torch.as_tensor(np.asarray(test.labels))
    for width in args.widths:
        spec = f"slim_w{width:g}"
        rows, networks = [], {how: copy.deepcopy(teacher) for how in STARTS}
        for layer in layers:
            block = get_layer(teacher, layer.name)
            if spec not in slim_specs(layer, block):
                continue
            row = [layer.name]
            for how in STARTS:
                slim = _started(spec, layer, block, fit[layer.name], how)
                row.append(None if slim is None else _nmse(slim, block, held[layer.name]))
                replace_layer(
                    networks[how],
                    layer.name,
                    slim if slim is not None else _started(spec, layer, block, None, "sliced"),
                )
            rows.append(row)
        print(
            f"\n{spec}: held-out block nMSE ({len(rows)} layers; {args.fit_images} fit images, {args.eval_images} test)"
        )
        print("| layer | " + " | ".join(STARTS) + " |\n| --- |" + " ---: |" * len(STARTS))
        for row in rows:
            print(f"| {row[0]} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in row[1:]) + " |")
        print(f"\n{spec} in every layer at once, no SGD step:")
        print("| start | agreement with the teacher's top-1 % | top-1 on labels % |\n| --- | ---: | ---: |")
        for how, network in networks.items():
            predicted = _logits(network.eval(), test.images, norm).argmax(1)
            agree = float((predicted == reference.argmax(1)).float().mean() * 100)
            top1 = float((predicted == labels).float().mean() * 100)
            print(f"| {how} | {agree:.1f} | {top1:.1f} |")
    print(f"\nteacher top-1 on labels: {float((reference.argmax(1) == labels).float().mean() * 100):.1f}%")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.slim_start", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", default=None)
    source.add_argument("--pretrained", action="store_true")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.75, 0.5])
    parser.add_argument("--fit-images", type=int, default=256)
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    run(args)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
