"""What a careful user would run instead of lana, each at the strongest recipe its documentation
gives (issue 25 item 3), matched to the *budget* (not to lana's student) so that they are cached
apart from lana and a change to lana never retrains them.

* **prune**: Torch-Pruning, Taylor importance (gradients of the loss on a few batches), global
  pruning with a per-layer cap, isomorphic groups, channels rounded to 8, BN statistics
  re-estimated on training images after pruning; the global ratio bisected to the budget.
* **fastnas**: NVIDIA Model Optimizer's FastNAS (``modelopt.torch.prune``, mode ``fastnas``): a
  FLOPs constraint bisected to the budget, its ``score_func`` top-1 on the score split, BN
  calibration through its ``data_loader``; the sensitivity map is computed once and reused from
  its checkpoint by every step of the bisection. Model Optimizer traces the model with torch.fx,
  which timm's TF-ported layers defeat (``Conv2dSame`` pads by the input's shape; ``BatchNormAct2d``
  is not in its registry: "The model does not contain any configurable hyperparameters!"), so
  :func:`traceable` first rewrites them as the layers its registry knows, with equal outputs at
  the workload's input size.
* **sibling**: a smaller network of the family (:func:`bench.baselines.sibling_model`), its width
  bisected to the budget (W1), or a pretrained smaller model whose own latency *is* the budget (W2).

Every competitor then gets the same KD fine-tuning, on as many training images after the teacher
as lana's student (block distillation + fine-tuning): see ``bench.__init__``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Calibration", "fastnas_model", "reestimate_bn", "taylor_prune_model", "traceable"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """Images a pruning method may look at: training images (gradients, BN statistics) and the
    score split (FastNAS's score function), uint8 as the data sets hold them, and the teacher's
    normalisation."""

    images: torch.Tensor
    labels: torch.Tensor
    score_images: torch.Tensor
    score_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int = 64

    def batches(self, count: int, score: bool = False):
        """The first ``count`` normalised batches ``(x, y)`` of the training (or score) images."""
        from lana.data import to_model_input

        images, labels = (self.score_images, self.score_labels) if score else (self.images, self.labels)
        for start in range(0, min(len(images), count * self.batch_size), self.batch_size):
            end = start + self.batch_size
            yield to_model_input(images[start:end], mean=self.mean, std=self.std), labels[start:end]


@torch.no_grad()
def reestimate_bn(model: nn.Module, calib: Calibration, batches: int = 16) -> nn.Module:
    """BatchNorm running statistics recomputed on training images (cumulative average), in place.

    Pruning removes channels whose outputs the remaining BN statistics were measured with; the
    Torch-Pruning and FastNAS guides both re-estimate (calibrate) them before fine-tuning.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
    model.train()
    for x, _ in calib.batches(batches):
        model(x)
    for m, momentum in saved.items():
        m.momentum = momentum
    return model.eval()


def taylor_prune_model(
    teacher: nn.Module,
    ratio: float,
    input_shape,
    calib: Calibration,
    round_to: int = 8,
    max_ratio: float = 0.9,
    grad_batches: int = 4,
) -> nn.Module:
    """Torch-Pruning's strongest documented CNN recipe at global ``ratio``.

    Taylor importance (|w * dL/dw| per group) from the cross-entropy gradients of
    ``grad_batches`` training batches; one global ranking over all layers, each layer pruned at
    most ``max_ratio`` (so no layer is emptied); isomorphic groups (structures of the same kind
    ranked together); channels rounded to ``round_to``; the classifier left whole; then BN
    statistics re-estimated. Deterministic for a given teacher, ratio and images.
    """
    import torch_pruning as tp

    model = copy.deepcopy(teacher).cpu().eval()
    for p in model.parameters():  # KD freezes the teacher; Torch-Pruning skips frozen layers
        p.requires_grad_(True)
    if ratio <= 0:
        return model
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(1, *input_shape),
        importance=tp.importance.GroupTaylorImportance(),
        pruning_ratio=ratio,
        global_pruning=True,
        max_pruning_ratio=max_ratio,
        isomorphic=True,
        round_to=round_to,
        ignored_layers=[model.get_classifier()],
    )
    model.zero_grad()
    for x, y in calib.batches(grad_batches):  # eval mode: gradients of the teacher as it predicts
        nn.functional.cross_entropy(model(x), y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return reestimate_bn(model, calib)


def traceable(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` (changed in place) with timm's ``Conv2dSame`` as a fixed ``ZeroPad2d`` and a plain
    ``Conv2d`` (the padding its input size at ``example`` gives) and ``BatchNormAct2d`` as
    ``BatchNorm2d`` + its activation: the modules Model Optimizer's tracer and registry handle.
    Outputs are unchanged at ``example``'s input size (tested)."""
    from timm.layers import BatchNormAct2d
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    sizes: dict[str, list[int]] = {}
    hooks = [module.register_forward_pre_hook(lambda _m, args, name=name: sizes.__setitem__(name, list(args[0].shape[-2:])))
             for name, module in model.named_modules() if isinstance(module, Conv2dSame)]  # fmt: skip
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    for name, module in list(model.named_modules()):
        if name in sizes:
            conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, 0,
                             module.dilation, module.groups, module.bias is not None)  # fmt: skip
            conv.load_state_dict(module.state_dict())
            pad = pad_same_arg(sizes[name], list(module.weight.shape[-2:]), module.stride, module.dilation)
            new = nn.Sequential(nn.ZeroPad2d(pad), conv)
        elif type(module) is BatchNormAct2d:
            bn = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)  # fmt: skip
            bn.load_state_dict(module.state_dict())
            new = nn.Sequential(bn, module.drop, module.act)
        else:
            continue
        new.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)
    return model


def fastnas_model(
    teacher: nn.Module,
    flops_pct: float,
    input_shape,
    calib: Calibration,
    checkpoint: str,
    score_batches: int = 16,
    bn_batches: int = 16,
) -> nn.Module:
    """FastNAS's subnet of ``teacher`` under ``flops_pct`` % of its FLOPs.

    As Model Optimizer's pruning guide sets it up: ``mtp.prune(model, mode="fastnas",
    constraints={"flops": ...}, dummy_input, config={"data_loader", "score_func",
    "checkpoint"})``; the score function is top-1 on the score split (``score_batches``
    batches), the data loader feeds BN calibration. ``checkpoint`` keeps the sensitivity map
    between calls (the costly part), so a bisection on ``flops_pct`` pays it once.

    Raises:
        ImportError: ``nvidia-modelopt`` (and ``torchprofile``) are not installed.
        bench.baselines.KnobOutOfRange: ``flops_pct`` is under the smallest subnet of FastNAS's
            search space (Model Optimizer: "NOT all constraints can be satisfied").
    """
    import modelopt.torch.prune as mtp

    model = traceable(copy.deepcopy(teacher).cpu().eval(), torch.zeros(1, *input_shape))
    score = list(calib.batches(score_batches, score=True))
    loader = list(calib.batches(bn_batches))

    @torch.no_grad()
    def score_func(candidate: nn.Module) -> float:
        candidate.eval()
        hits = sum(int((candidate(x).argmax(1) == y).sum()) for x, y in score)
        return hits / sum(len(y) for _, y in score)

    try:
        pruned, _ = mtp.prune(
            model,
            mode="fastnas",
            constraints={"flops": f"{flops_pct:.4g}%"},
            dummy_input=torch.randn(1, *input_shape),
            config={"data_loader": loader, "score_func": score_func, "checkpoint": checkpoint, "verbose": False},
        )
    except ValueError as error:  # under the search space's smallest subnet: not a failure of FastNAS
        if "constraints can be satisfied" not in str(error):
            raise
        from bench.baselines import KnobOutOfRange

        raise KnobOutOfRange(f"no FastNAS subnet is under {flops_pct:.4g}% of the teacher's FLOPs", "low") from error
    return reestimate_bn(pruned.eval(), calib)
