"""The ILP's data: per layer, the candidates' specs, scores, latencies, params and MACs.

`load_problem` reads a library file through `lana.library.Library` (h5py and numpy only), so
that ``lana solve`` never imports torch. `restrict` applies ``--keep``/``--exclude`` patterns, and
`parse_budget` turns ``0.5x`` / ``3.2ms`` into milliseconds.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Problem", "load_problem", "restrict", "subset", "parse_budget", "TEACHER"]

TEACHER = "teacher"  # the spec that keeps a layer's original block


@dataclass(frozen=True, eq=False)
class Problem:
    """One library, seen through one latency table and one score kind.

    Arrays are per layer, in network order, aligned with ``specs[l]``. Change with `restrict` or
    `dataclasses.replace`, never in place (the arrays are read-only).

    Attributes:
        model: the teacher's timm name.
        table: the latency table the budget applies to.
        score: the score kind the objective sums (``top1_drop``, ``ce_delta`` or ``kl``).
        layers: layer names.
        specs: candidate specs of each layer.
        scores: predicted accuracy cost of each candidate (``score`` kind).
        latency: table name -> per-layer latency arrays in ms, for every table in the library.
        fixed_ms: table name -> latency of the parts of the network no candidate replaces.
        params: per-layer parameter counts.
        macs: per-layer multiply-accumulate counts.
        source: the library path it was read from.
        noisy: tables stored with ``noisy=True`` (:mod:`lana.noise`), with the warning to show.
        teacher_measured_ms: table name -> the teacher timed whole when the table was made (what
            ``x`` budgets do *not* multiply: see :func:`parse_budget`).
    """

    model: str
    table: str
    score: str
    layers: tuple[str, ...]
    specs: tuple[tuple[str, ...], ...]
    scores: tuple[np.ndarray, ...]
    latency: Mapping[str, tuple[np.ndarray, ...]] = field(hash=False)
    fixed_ms: Mapping[str, float] = field(hash=False)
    params: tuple[np.ndarray, ...] = ()
    macs: tuple[np.ndarray, ...] = ()
    source: str = ""
    noisy: Mapping[str, str] = field(default_factory=dict, hash=False)  # table -> why it is not trusted
    teacher_measured_ms: Mapping[str, float] = field(default_factory=dict, hash=False)

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.latency)

    def teacher_ms(self, table: str | None = None) -> float:
        """Predicted latency of the unmodified teacher: fixed_ms + sum of the teacher candidates."""
        table = table or self.table
        total = self.fixed_ms[table]
        for l, specs in enumerate(self.specs):
            if TEACHER not in specs:
                raise ValueError(
                    f"layer {self.layers[l]} has no {TEACHER!r} candidate, so a "
                    "budget relative to the teacher (0.5x) is undefined: use ms"
                )
            total += float(self.latency[table][l][specs.index(TEACHER)])
        return total

    def predicted_latency_ms(self, choice: Sequence[int], table: str | None = None) -> float:
        """fixed_ms + the chosen candidates' latencies (``choice[l]`` indexes ``specs[l]``)."""
        table = table or self.table
        rows = self.latency[table]
        return self.fixed_ms[table] + float(sum(rows[l][c] for l, c in enumerate(choice)))

    def predicted_drop(self, choice: Sequence[int]) -> float:
        return float(sum(self.scores[l][c] for l, c in enumerate(choice)))

    def total_params(self, choice: Sequence[int]) -> int:
        return int(sum(int(self.params[l][c]) for l, c in enumerate(choice)))

    def total_macs(self, choice: Sequence[int]) -> int:
        return int(sum(int(self.macs[l][c]) for l, c in enumerate(choice)))


def parse_budget(budget: str | float, teacher_ms: float | None) -> float:
    """Turns a budget into milliseconds.

    What ``x`` multiplies: the teacher's *predicted* latency on the budget's table (its fixed part
    plus its own blocks' numbers), the very sum the ILP compares plans with, so that ``1x`` always
    admits the teacher and a plan's ``0.5x`` is half of the same yardstick whatever the table's
    bias. The table also holds the teacher timed whole when it was made (``lana info`` shows both,
    and ``lana solve`` prints both beside the budget).

    Args:
        budget: ``"0.5x"`` (a factor of the teacher's predicted latency), ``"3.2ms"``, or a
            number (milliseconds; a string needs its unit, ``"3.2"`` is refused as ambiguous).
        teacher_ms: the teacher's predicted latency on the budget's table; only needed for ``x``.

    Returns:
        The budget in ms, > 0.

    Raises:
        ValueError: the budget is not understood, has no unit, or is not positive.
    """
    text = str(budget).strip().lower()
    relative = text.endswith("x")
    number = text[:-1] if relative else text[:-2] if text.endswith("ms") else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(
            f"budget {budget!r} is not understood: give a factor of the teacher's predicted "
            "latency such as 0.5x, or milliseconds such as 3.2ms"
        ) from None
    if isinstance(budget, str) and not relative and not text.endswith("ms"):
        raise ValueError(
            f"budget {budget!r} has no unit: write {number}ms for milliseconds or {number}x for a factor of "
            "the teacher's predicted latency"
        )
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"budget {budget!r} must be positive: 0.5x (half the teacher's latency) or 3.2ms")
    if relative:
        if teacher_ms is None:
            raise ValueError(
                f"budget {budget!r} is relative, but the library has no teacher candidate in every layer to "
                "measure it by: give the budget in ms"
            )
        return value * teacher_ms
    return value


def load_problem(
    path, table: str | None = None, score: str | None = None, *, allow_incomplete: bool = False
) -> Problem:
    """Reads the data of the ILP from a library file (no weights are read).

    Args:
        path: the HDF5 library.
        table: latency table of the budget; default: the first (or only) table, in the
            file's order (HDF5 lists names alphabetically).
        score: score kind; default: the build config's ``default_score``, else ``kl`` if the
            library has it, else the first kind.
        allow_incomplete: read a library whose root attr ``complete`` is false (stages missing).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a lana library, incomplete, or an unknown table/score (the message lists
            the available ones).
    """
    from lana.library import Library  # h5py costs ~0.1 s at import: only loading needs it
    from lana.noise import describe

    library = Library(path)
    if not allow_incomplete:
        library.require_complete()
    records = library.layers()
    tables = list(library.tables)
    kinds = library.score_kinds()
    from lana.table_names import canonical_table

    table = canonical_table(table) if table is not None and table not in tables else table
    table = _pick(table, tables, "table", path, default=tables[0] if tables else None)
    score = _pick(score, kinds, "score", path, default=library.default_score(kinds))
    fixed_ms = {t: float(library.tables[t].get("fixed_ms", 0.0)) for t in tables}
    for r in records:
        missing = [t for t in tables if t not in r.latency]
        if missing:
            raise ValueError(f"{path}: layer {r.name} has no latency on table(s) {', '.join(missing)}")
        sizes = {len(r.specs), len(r.scores[score]), len(r.cand_params), len(r.cand_macs)}
        sizes |= {len(r.latency[t]) for t in tables}
        if len(sizes) != 1:
            raise ValueError(f"{path}: layer {r.name} has arrays of different lengths {sizes}")
    return Problem(
        model=library.model,
        table=table,
        score=score,
        layers=tuple(r.name for r in records),
        specs=tuple(tuple(r.specs) for r in records),
        scores=tuple(_frozen(np.asarray(r.scores[score], dtype=np.float64)) for r in records),
        latency={t: tuple(_frozen(np.asarray(r.latency[t], dtype=np.float64)) for r in records) for t in tables},
        fixed_ms=fixed_ms,
        params=tuple(_frozen(np.asarray(r.cand_params, dtype=np.int64)) for r in records),
        macs=tuple(_frozen(np.asarray(r.cand_macs, dtype=np.int64)) for r in records),
        source=str(path),
        noisy={t: warning for t in tables if (warning := describe(t, library.tables[t]))},
        teacher_measured_ms={t: float(a["teacher_ms"]) for t, a in library.tables.items() if "teacher_ms" in a},
    )


def restrict(problem: Problem, keep: Iterable[str] = (), exclude: Iterable[str] = ()) -> Problem:
    """Applies ``--keep`` and ``--exclude`` patterns (fnmatch, case-sensitive).

    * ``keep=P``: every layer whose *name* matches P keeps its teacher block: only its ``teacher``
      candidate remains. P must match at least one layer name.
    * ``exclude=P``: every candidate whose *spec* matches P is forbidden, in every layer
      (``ir_*_se``; ``teacher`` too, to force every layer to change). ``exclude=LAYER:SPEC`` limits
      this to the layers whose name matches LAYER (``layer1.*:dw_*``). P must match some candidate.

    Raises:
        ValueError: a pattern matches nothing, a kept layer has no teacher candidate, or a layer is
            left without candidates.
    """
    allowed = [np.ones(len(s), dtype=bool) for s in problem.specs]
    for pattern in keep:
        hits = [l for l, name in enumerate(problem.layers) if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise ValueError(f"--keep {pattern!r} matches no layer name")
        for l in hits:
            if TEACHER not in problem.specs[l]:
                raise ValueError(f"--keep {pattern!r}: layer {problem.layers[l]} has no teacher")
            allowed[l] &= np.array([s == TEACHER for s in problem.specs[l]])
    for pattern in exclude:
        layer_pattern, _, spec_pattern = pattern.rpartition(":")
        matched = False
        for l, specs in enumerate(problem.specs):
            if layer_pattern and not fnmatch.fnmatchcase(problem.layers[l], layer_pattern):
                continue
            hit = np.array([fnmatch.fnmatchcase(s, spec_pattern) for s in specs], dtype=bool)
            matched |= bool(hit.any())
            allowed[l] &= ~hit
        if not matched:
            raise ValueError(f"--exclude {pattern!r} matches no candidate spec")
    for l, mask in enumerate(allowed):
        if not mask.any():
            raise ValueError(f"--keep/--exclude leave layer {problem.layers[l]} with no candidate")
    return subset(problem, [np.flatnonzero(mask) for mask in allowed])


def subset(problem: Problem, index: Sequence[np.ndarray]) -> Problem:
    """The same problem with only candidates ``index[l]`` in each layer l."""

    def take(rows):
        return tuple(_frozen(row[i]) for row, i in zip(rows, index))

    return dataclasses.replace(
        problem,
        specs=tuple(tuple(s[j] for j in i) for s, i in zip(problem.specs, index)),
        scores=take(problem.scores),
        params=take(problem.params),
        macs=take(problem.macs),
        latency={t: take(rows) for t, rows in problem.latency.items()},
    )


def _pick(wanted: str | None, available: list[str], what: str, path, default: str | None) -> str:
    if not available:
        raise ValueError(f"{path} has no {what}s")
    if wanted is None:
        return default
    if wanted not in available:
        raise ValueError(f"{what} {wanted!r} is not in {path}: available {what}s are " + ", ".join(available))
    return wanted


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array)  # a copy: never share a buffer with the caller
    array.flags.writeable = False
    return array
