"""Latency meters: one small base class, one method, timing a module at an input shape.

``TorchMeter`` (eager torch on the CPU with a set number of threads, or CUDA with events),
``OnnxRuntimeMeter`` (a CPU session), ``OpenVinoMeter`` (a compiled CPU model), ``make_meter`` to pick one by name, and ``fingerprint`` to
record what a table was measured on. The tables built from them live in :mod:`lana.latency`.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lana.table_names import check_int8_target, default_tables, parse_table_name, table_name  # noqa: F401

__all__ = [
    "BACKENDS",
    "BUDGET_MARGIN",
    "measure_latency",
    "measure_against_teacher",
    "Timing",
    "LatencyMeter",
    "TorchMeter",
    "CudaMeter",
    "OnnxRuntimeMeter",
    "OpenVinoMeter",
    "make_meter",
    "meter_for_table",
    "fingerprint",
    "parse_table_name",
    "table_name",
    "default_tables",
    "check_int8_target",
    "keep_freed_memory",
]

BACKENDS = ("torch", "onnxruntime", "openvino")

# 20 samples put the median within a few % even when single samples scatter by 20-30% (batch 1
# on a busy 2-core CPU); 3 warm-up calls cover oneDNN/cuDNN kernel selection and cache fill.
_DEFAULT_REPEATS = 20
_DEFAULT_WARMUP = 3


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one module at one input shape.

    Attributes:
        median_ms: median of the samples, in milliseconds.
        spread_ms: interquartile range of the samples, in milliseconds.
        samples_ms: every sample, in the order taken.
    """

    median_ms: float
    spread_ms: float
    samples_ms: tuple[float, ...]

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Timing:
        """Summarise samples (ms) by their median and interquartile range."""
        values = np.asarray(samples_ms, dtype=np.float64)
        q25, q50, q75 = np.percentile(values, [25, 50, 75])
        return cls(float(q50), float(q75 - q25), tuple(float(v) for v in values))


class LatencyMeter:
    """Times a module on one target: ``meter(module, (C, H, W)) -> Timing``.

    Subclasses are frozen dataclasses holding the target's settings: ``device``, ``batch_size``,
    ``threads`` (None: every core this process may use), ``repeats`` (samples per call) and
    ``warmup`` (untimed calls first). ``backend`` names the runtime; ``eager`` says whether the
    module's own Python ``forward`` runs while it is timed, which lets :func:`measure_table` time
    blocks inside the network.
    """

    backend: str = ""
    eager: bool = False

    def __call__(self, module: nn.Module, input_shape: Sequence[int]) -> Timing:
        """Time ``module`` on a random batch of shape ``(batch_size, *input_shape)``."""
        raise NotImplementedError


def _all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _torch_threads(threads: int):
    """Run torch with ``threads`` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if previous != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if previous != threads:
            torch.set_num_threads(previous)


@dataclass(frozen=True)
class TorchMeter(LatencyMeter):
    """Torch eager inference (``eval``, ``inference_mode``) on CPU or one CUDA device.

    On CPU each call is timed with ``perf_counter`` (CPU ops are synchronous). On CUDA each call
    is bracketed by CUDA events and the device is synchronised after it, so a sample is the latency
    of one batch from an idle queue, with ``cudnn.benchmark`` on during warm-up and timing.
    The module is moved to the device and set to eval (its training flag is restored).
    """

    device: str = "cpu"
    batch_size: int = 1
    threads: int | None = None
    repeats: int = _DEFAULT_REPEATS
    warmup: int = _DEFAULT_WARMUP
    channels_last: bool = False

    backend = "torch"
    eager = True

    def __post_init__(self):
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"device {self.device!r} requested but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use device='cpu'"
            )
        if self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"batch_size and repeats must be >= 1, warmup >= 0: {self}")

    def __call__(self, module: nn.Module, input_shape: Sequence[int]) -> Timing:
        device = torch.device(self.device)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        was_training = module.training
        module.to(device=device, memory_format=layout).eval()
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((self.batch_size, *input_shape), generator=generator)
        x = x.to(device=device, memory_format=layout)
        try:
            with _torch_threads(self.threads or _all_cores()), torch.inference_mode():
                if device.type == "cuda":
                    samples = self._time_cuda(module, x, device)
                else:
                    samples = self._time_cpu(module, x)
        finally:
            module.train(was_training)
        return Timing.of(samples)

    def _time_cpu(self, module: nn.Module, x: torch.Tensor) -> list[float]:
        keep_freed_memory()  # no page faults inside the timed calls
        for _ in range(self.warmup):
            module(x)
        samples = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            module(x)
            samples.append((time.perf_counter() - start) * 1e3)
        return samples

    def _time_cuda(self, module: nn.Module, x: torch.Tensor, device: torch.device) -> list[float]:
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # pick the fastest kernels, as deployment would
        try:
            with torch.cuda.device(device):
                for _ in range(max(self.warmup, 1)):  # >= 1: cudnn autotunes on the first call
                    module(x)
                torch.cuda.synchronize(device)
                samples = []
                for _ in range(self.repeats):
                    start = torch.cuda.Event(enable_timing=True)
                    end = torch.cuda.Event(enable_timing=True)
                    start.record()
                    module(x)
                    end.record()
                    torch.cuda.synchronize(device)  # one batch from an idle queue: its latency
                    samples.append(start.elapsed_time(end))
        finally:
            torch.backends.cudnn.benchmark = previous
        return samples


@dataclass(frozen=True)
class CudaMeter(TorchMeter):
    """:class:`TorchMeter` on the current CUDA device."""

    device: str = "cuda"


@dataclass(frozen=True)
class _ExportedMeter(LatencyMeter):
    """What the CPU runtimes share: the module exported to ONNX (:func:`_onnx_bytes`) at a fixed
    random input, ``threads`` threads, ``repeats`` timed calls after ``warmup``; a graph, so
    blocks are timed alone (``eager`` False)."""

    batch_size: int = 1
    threads: int | None = None
    repeats: int = _DEFAULT_REPEATS
    warmup: int = _DEFAULT_WARMUP
    opset: int = 17

    device = "cpu"
    eager = False

    def _input(self, input_shape: Sequence[int]) -> torch.Tensor:
        return torch.randn((self.batch_size, *input_shape), generator=torch.Generator().manual_seed(0))


@dataclass(frozen=True)
class OnnxRuntimeMeter(_ExportedMeter):
    """ONNX Runtime on CPU: the module is exported to ONNX in memory, then a session is timed.

    Export uses the TorchScript exporter (``dynamo=False``): it is ~15x faster than the dynamo
    exporter here (0.35 s vs 6 s for resnet18) and every candidate block is traced. Sessions use
    all graph optimisations, sequential execution and ``threads`` intra-op threads.
    """

    backend = "onnxruntime"

    def __call__(self, module: nn.Module, input_shape: Sequence[int]) -> Timing:
        import onnxruntime

        x = self._input(input_shape)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads or _all_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(
            _onnx_bytes(module, x, self.opset), options, providers=["CPUExecutionProvider"]
        )
        feed = {session.get_inputs()[0].name: x.numpy()}
        return _timed_calls(lambda: session.run(None, feed), self.warmup, self.repeats)


@dataclass(frozen=True)
class OpenVinoMeter(_ExportedMeter):
    """OpenVINO on CPU: the module is exported to ONNX (as for ONNX Runtime), read and compiled by
    OpenVINO with the latency hint, one stream and ``threads`` inference threads; one infer
    request is timed, as a deployed batch-``batch_size`` service would call it."""

    backend = "openvino"

    def __call__(self, module: nn.Module, input_shape: Sequence[int]) -> Timing:
        import tempfile

        import openvino

        x = self._input(input_shape)
        core = openvino.Core()
        with tempfile.TemporaryDirectory() as folder:  # OpenVINO reads ONNX from a file
            path = os.path.join(folder, "model.onnx")
            with open(path, "wb") as f:
                f.write(_onnx_bytes(module, x, self.opset))
            config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                      "INFERENCE_NUM_THREADS": str(self.threads or _all_cores())}  # fmt: skip
            compiled = core.compile_model(core.read_model(path), "CPU", config)
        request, feed = compiled.create_infer_request(), {0: x.numpy()}
        return _timed_calls(lambda: request.infer(feed), self.warmup, self.repeats)


_KEPT: bool | None = None  # keep_freed_memory's answer, once per process


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep the memory it frees (no ``mmap`` blocks, no heap trim), once per
    process; True when it took (False off glibc).

    Otherwise PyTorch's large CPU tensors come from ``mmap`` and go back on free, so every forward
    pass faults its activations in again. On a 2-core AMD EPYC VM whose host reclaims guest pages,
    that was 18,000-24,000 page faults and 21-32% of the CPU time in the kernel per W2 forward
    pass: the teacher ran 1.4x slower, its timing wandered 45% between passes, and a student's
    ratio to it moved by 5% (``bench.timing_probe``, bench/results/checks/timing_probe_W2_malloc_*).
    A serving process reuses its memory (or is linked to jemalloc / tcmalloc), so a latency table
    is timed that way too. Process-wide: memory freed stays with the process.
    """
    global _KEPT
    if _KEPT is None:
        import ctypes
        import ctypes.util

        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):
            _KEPT = False
        else:
            m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
            _KEPT = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
    return _KEPT


def _timed_calls(call, warmup: int, repeats: int) -> Timing:
    """``warmup`` untimed calls, then ``repeats`` timed ones (wall clock, ms), with freed memory
    kept (:func:`keep_freed_memory`)."""
    keep_freed_memory()
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return Timing.of(samples)


def _onnx_bytes(module: nn.Module, x: torch.Tensor, opset: int) -> bytes:
    """The module (moved to CPU, eval) as a serialised ONNX model."""
    was_training = module.training
    module.cpu().eval()
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=opset)
        return buffer.getvalue()
    finally:
        module.train(was_training)


def make_meter(
    device: str = "cpu",
    backend: str = "torch",
    batch_size: int = 1,
    threads: int | None = None,
    **options,
) -> LatencyMeter:
    """The meter for a target, e.g. ``make_meter("cpu", "onnxruntime", 64)``.

    Args:
        device: ``cpu`` or ``cuda`` (``cuda:N``).
        backend: one of :data:`BACKENDS`.
        batch_size: images per forward.
        threads: CPU threads (None: every core this process may use).
        **options: further meter fields (``repeats``, ``warmup``, ``channels_last``).

    Raises:
        ValueError: unknown backend, or a backend that cannot run on the device.
        RuntimeError: CUDA requested but not available.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown latency backend {backend!r}; choose one of {BACKENDS}")
    if backend in ("onnxruntime", "openvino"):
        if torch.device(device).type != "cpu":
            raise ValueError(f"the {backend} meter times the CPU only, not {device!r}")
        meter = OnnxRuntimeMeter if backend == "onnxruntime" else OpenVinoMeter
        return meter(batch_size=batch_size, threads=threads, **options)
    return TorchMeter(device=device, batch_size=batch_size, threads=threads, **options)


def meter_for_table(name: str, threads: int | None = None, **options) -> LatencyMeter:
    """The meter that times table ``name``'s target."""
    spec = parse_table_name(name)
    return make_meter(spec["device"], spec["backend"], spec["batch_size"], threads=threads, **options)


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fingerprint(meter: LatencyMeter) -> dict:
    """What a latency table was measured on, to keep with the table.

    Returns:
        dict with ``cpu``, ``cpu_count``, ``threads``, ``torch``, ``onnxruntime`` (None if not
        installed), ``backend``, ``device``, ``gpu`` (None off CUDA), ``cuda``, ``batch_size``,
        ``channels_last``, ``python`` and ``platform``.
    """
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    onnxruntime_version = installed("onnxruntime")
    device = torch.device(meter.device)
    on_cuda = device.type == "cuda"
    return {
        "cpu": _cpu_name(),
        "cpu_count": _all_cores(),
        "threads": meter.threads or _all_cores(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime_version,
        "openvino": installed("openvino") if meter.backend == "openvino" else None,
        "backend": meter.backend,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if on_cuda else None,
        "cuda": torch.version.cuda if on_cuda else None,
        "batch_size": meter.batch_size,
        "channels_last": bool(getattr(meter, "channels_last", False)),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def measure_latency(
    models: dict, input_shape, table: str, rounds: int = 5, threads: int | None = None
) -> dict[str, dict]:
    """Median (and IQR) end-to-end latency of each model on ``table``'s target, interleaved.

    Models are timed in shipped form (:func:`lana.candidates.inference_form`: BN folded, rep
    branches fused), as the library's tables are.
    """
    from lana.candidates import inference_form

    meter = meter_for_table(table, threads=threads)
    models = {name: inference_form(model) for name, model in models.items()}  # timed as shipped
    samples = {name: [] for name in models}
    for _ in range(rounds):  # interleave so that drifting load hits every model alike
        for name, model in models.items():
            samples[name] += list(meter(model, input_shape).samples_ms)
    return {
        name: {"median_ms": Timing.of(s).median_ms, "spread_ms": Timing.of(s).spread_ms} for name, s in samples.items()
    }


# a plan is kept only when it measures this share under its budget: the bench's final pass (and a
# user's own) times it again, and a plan kept at 0.998 x the budget came out at 1.04 x there (W2)
BUDGET_MARGIN = 0.01

_TEACHER_KEY = "__teacher__"


def measure_against_teacher(
    models: dict, teacher, input_shape, table: str, reference_ms: float | None, rounds: int = 5,
    threads: int | None = None,
) -> dict[str, dict]:  # fmt: skip
    """Each model timed interleaved with the teacher and put on the library's scale: its median
    times ``reference_ms`` (the teacher's latency on ``table`` that the budget was set from) over
    the teacher's median in the same pass.

    A budget is a share of the teacher's latency (``0.5x``), or milliseconds on the library's scale;
    the machine's speed drifts between the table, the plan's measurement and a later check (W2's
    teacher took 90.6 ms at the start of a run and 82.7 ms at its end), and that drift moves every
    model alike, so it cancels in the ratio. ``reference_ms`` None: raw medians.

    Returns ``{name: {"median_ms": on the library's scale, "raw_ms": as timed, "teacher_ms": the
    teacher in this pass}}``.
    """
    if _TEACHER_KEY in models:
        raise ValueError(f"{_TEACHER_KEY!r} is the teacher's own key here; name the model otherwise")
    timing = measure_latency({**models, _TEACHER_KEY: teacher}, input_shape, table, rounds=rounds, threads=threads)
    now = timing.pop(_TEACHER_KEY)["median_ms"]
    scale = reference_ms / now if reference_ms else 1.0
    return {name: {"median_ms": t["median_ms"] * scale, "raw_ms": t["median_ms"], "teacher_ms": now}
            for name, t in timing.items()}  # fmt: skip
