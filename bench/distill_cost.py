"""Cost of layer-wise distillation per candidate per batch, in teacher training steps.

Times, interleaved in one process (so that machine noise hits both alike), a teacher training
step (forward + backward + SGD on a batch) and one distillation step of every candidate of every
layer on the same batch, and reports their ratio divided by the number of trained candidates.

    python3 bench/distill_cost.py --model resnet18 --img-size 32 --space default --batch-size 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--space", default="default")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lana.context import LibraryContext
    from lana.distill import DistillConfig, _Chunk, _normalised_mse, capture_io
    from lana.teacher import load_teacher

    torch.manual_seed(0)
    teacher = load_teacher(args.model, 10, checkpoint=args.checkpoint)
    ctx = LibraryContext.for_space(teacher, args.img_size, args.space)
    chunk = _Chunk(range(len(ctx.layers)), ctx.layers, ctx.specs, ctx.build, DistillConfig(), "cpu")
    names = [layer.name for layer in ctx.layers]
    student = load_teacher(args.model, 10)  # a copy to train, so the teacher stays fixed
    student.load_state_dict(teacher.state_dict())
    sgd = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 10, (args.batch_size,))

    def teacher_step():
        student.train()
        loss = F.cross_entropy(student(x), y)
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()

    def distill_step():
        io = capture_io(teacher.eval(), names, x)
        losses = []
        for key, module in chunk.modules.items():
            name = ctx.layers[int(key.split("/")[0])].name
            x_in, target = io[name]
            losses.append(_normalised_mse(module(x_in), target, target.var().clamp_min(1e-8)))
        loss = torch.stack(losses).sum()
        chunk.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        chunk.optimizer.step()

    for fn in (teacher_step, distill_step):  # warm-up
        fn()
    times = {"teacher": [], "distill": []}
    for _ in range(args.repeats):
        for name, fn in (("teacher", teacher_step), ("distill", distill_step)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    teacher_s, distill_s = statistics.median(times["teacher"]), statistics.median(times["distill"])
    trained = len(chunk.modules)
    result = {
        "model": args.model,
        "img_size": args.img_size,
        "space": args.space,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "trained_candidates": trained,
        "teacher_step_s": teacher_s,
        "distill_step_s": distill_s,
        "teacher_steps_per_candidate": distill_s / teacher_s / trained,
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
