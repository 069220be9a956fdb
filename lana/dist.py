"""Where a build runs: the device (:func:`resolve_device`), and under torchrun which rank does what.

Training (the teacher, the student's fine-tuning: :func:`lana.train.fit`) is data-parallel under
torchrun (DDP). The build is split by *candidates*, not by data: each rank distils whole chunks of layers (and
scores whole layers) on the full data, so ranks never exchange gradients. Candidates of different
layers share nothing, so this needs no communication but a few barriers, and a 2-rank build
computes exactly what a 1-rank build computes (per-candidate seeds, the same batches). The work
directory must be on a file system all ranks see (one node, or a shared mount across nodes);
rank 0 alone times latency and writes the library.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "is_main_process", "resolve_device", "split_round_robin"]

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None → cuda when available else cpu; a clear error for cuda without a GPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was given but torch sees no CUDA GPU; use --device cpu")
    return device


def is_main_process() -> bool:
    """Rank 0 under torchrun (the one that writes files), or a process of its own."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: torch.device) -> DistContext:
        """Join the process group torchrun describes in the environment (a no-op without it).

        NCCL on CUDA, gloo on CPU. The timeout is long because rank 0 times latency alone while
        the others wait at a barrier.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(local)
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=4))
            # leave the group before the interpreter tears down: a gloo group destroyed at exit
            # aborts the process ("terminate called without an active exception", seen in CI)
            atexit.register(_leave_group)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # ranks on one node share its cores: oversubscribed threads slow small convs many-fold
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        log.info("rank %d of %d (local %d), backend %s", rank, world, local, dist.get_backend())
        return cls(rank, world, local)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def mine(self, items: list) -> list:
        """The items this rank works on."""
        return split_round_robin(items, self.world_size)[self.rank]


def _leave_group() -> None:
    """At exit: free what still holds the group (a DDP wrapper in a reference cycle), wait for the
    other ranks when this one ends normally (a rank leaving while another still talks to it
    aborted CI's 2-rank fit at exit), then destroy the group while the interpreter is whole."""
    import gc
    import sys

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    gc.collect()
    if getattr(sys, "last_value", None) is None:  # set when an uncaught error ends the script
        try:
            dist.barrier()
        except RuntimeError as error:  # another rank failed: leave anyway
            log.warning("leaving the process group without the other ranks: %s", error)
    dist.destroy_process_group()


def split_round_robin(items: list, parts: int) -> list[list]:
    """Deal items to ``parts`` ranks in turn (neighbouring layers cost alike, so this balances)."""
    return [items[r::parts] for r in range(parts)]
