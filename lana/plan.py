"""Plans: the ILP's answer (`Plan`), and the functions behind ``lana solve`` and ``lana pareto``.

Plan JSON (``Plan.to_json``, ``lana solve --json``, ``--out``); the first ten keys are those of
ARCHITECTURE.md, the rest add what a reader needs to trust and reproduce the plan::

    {"model": "resnet18",                 # the teacher's timm name
     "table": "cpu-b64",                  # the budget's latency table
     "score": "kl",                       # the score kind the drop sums
     "budget_ms": 3.2,                    # the budget on `table`, fixed part included
     "choices": {"layer1.0": "ir_k3_e2", ...},   # every layer, in network order
     "predicted_latency_ms": 3.1,         # fixed_ms + sum of the chosen latencies on `table`
     "predicted_drop": 0.4,               # sum of the chosen scores
     "solver": "highs", "solve_time_s": 0.01,
     "latency_ms": {"cpu-b64": 3.1, "gpu-b1": 0.9},  # predicted on every table of the library
     "params": 11200000, "macs": 1800000000,          # totals over the replaceable layers
     "layer_latency_ms": {"layer1.0": 0.12, ...},     # per layer, on `table`
     "layer_score": {"layer1.0": 0.01, ...},          # per layer
     "config": {"library": "lib.h5", "budget": "0.5x", "teacher_ms": {...}, "max_params": null,
                "max_macs": null, "extra_budgets": {}, "keep": [], "exclude": [], ...}}

`Plan.from_json` needs only the first ten keys (``budget_ms``, ``solver`` and ``solve_time_s`` may
be missing too), so plans written by hand or by other tools load as well.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lana.problem import TEACHER, Problem, load_problem, parse_budget, restrict

log = logging.getLogger(__name__)

__all__ = [
    "Plan",
    "SolveOptions",
    "solve_library",
    "solve_diverse",
    "pareto",
    "plot_pareto",
    "plan_errors",
    "verify_plan",
]

_REQUIRED = ("model", "choices", "predicted_latency_ms", "predicted_drop")


@dataclass(frozen=True)
class Plan:
    """One candidate per layer, with its predicted latency and accuracy drop."""

    model: str
    choices: tuple[tuple[str, str], ...]  # (layer, spec), in network order
    predicted_latency_ms: float
    predicted_drop: float
    table: str = ""
    score: str = ""
    budget_ms: float | None = None
    solver: str = ""
    solve_time_s: float = 0.0
    latency_ms: Mapping[str, float] = field(default_factory=dict, hash=False)
    params: int | None = None
    macs: int | None = None
    layer_latency_ms: tuple[float, ...] = ()  # aligned with choices
    layer_score: tuple[float, ...] = ()  # aligned with choices
    config: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def specs(self) -> dict[str, str]:
        """layer -> spec."""
        return dict(self.choices)

    def to_dict(self) -> dict[str, Any]:
        """The plan JSON's content (schema in the module docstring)."""
        layers = [layer for layer, _ in self.choices]
        return {
            "model": self.model,
            "table": self.table,
            "score": self.score,
            "budget_ms": self.budget_ms,
            "choices": dict(self.choices),
            "predicted_latency_ms": self.predicted_latency_ms,
            "predicted_drop": self.predicted_drop,
            "solver": self.solver,
            "solve_time_s": self.solve_time_s,
            "latency_ms": dict(self.latency_ms),
            "params": self.params,
            "macs": self.macs,
            "layer_latency_ms": dict(zip(layers, self.layer_latency_ms)),
            "layer_score": dict(zip(layers, self.layer_score)),
            "config": dict(self.config),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The plan JSON as text."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Reads plan JSON content; only the keys of ARCHITECTURE.md's example are required.

        Raises:
            ValueError: not a JSON object, a required key missing, or ``choices`` not ``{layer: spec}``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan is a JSON object, not a {type(data).__name__}")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(
                f"the plan lacks {', '.join(missing)}: a plan holds at least {', '.join(_REQUIRED)} "
                "(`lana solve LIB --budget 0.5x --out PLAN.json` writes one)"
            )
        if not isinstance(data["choices"], Mapping) or not data["choices"]:
            raise ValueError(
                'the plan\'s choices must be an object {"layer name": "candidate spec", ...}, one per layer'
            )
        choices = tuple((str(layer), str(spec)) for layer, spec in data["choices"].items())
        per_layer = {
            key: tuple(float(data[key][layer]) for layer, _ in choices)
            for key in ("layer_latency_ms", "layer_score")
            if all(layer in data.get(key, {}) for layer, _ in choices)
        }
        return cls(
            model=data["model"],
            choices=choices,
            predicted_latency_ms=float(data["predicted_latency_ms"]),
            predicted_drop=float(data["predicted_drop"]),
            table=data.get("table", ""),
            score=data.get("score", ""),
            budget_ms=data.get("budget_ms"),
            solver=data.get("solver", ""),
            solve_time_s=data.get("solve_time_s", 0.0),
            latency_ms=dict(data.get("latency_ms", {})),
            params=data.get("params"),
            macs=data.get("macs"),
            config=dict(data.get("config", {})),
            **per_layer,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Reads plan JSON text."""
        return cls.from_dict(json.loads(text))

    def save(self, path) -> Path:
        """Writes the JSON atomically (:func:`lana.files.write_text`)."""
        from lana.files import write_text

        return write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path) -> Plan:
        """Reads a plan JSON file.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not plan JSON (the message names the file and what is wrong).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no plan file {path} (`lana solve LIB --budget 0.5x --out {path}` writes one)")
        try:
            return cls.from_json(path.read_text())
        except UnicodeDecodeError:
            raise ValueError(
                f"{path} is not a plan: it is not text (a plan is the JSON of `lana solve --out`)"
            ) from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not a plan: not valid JSON ({error})") from None
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is not a valid plan: {error}") from None


@dataclass(frozen=True)
class SolveOptions:
    """How a library is solved, besides the budget (what ``lana solve``'s options set).

    Attributes:
        table: latency table of the budget; default: the library's first table.
        score: score kind to minimise; default: see `lana.problem.load_problem`.
        solver: ``highs`` (default), ``cbc``, ``pulp-highs`` or ``cpsat``.
        max_params: limit on the total params of the replaceable layers.
        max_macs: limit on their total MACs.
        extra_budgets: budgets on other tables, met at the same time: ``{"gpu-b64": "0.6x"}``.
        keep: layer-name patterns whose layers keep the teacher (`lana.problem.restrict`).
        exclude: spec patterns (or ``LAYER:SPEC``) of forbidden candidates.
        allow_incomplete: solve a library whose build has not finished.
    """

    table: str | None = None
    score: str | None = None
    solver: str = "highs"
    max_params: int | None = None
    max_macs: int | None = None
    extra_budgets: Mapping[str, str | float] = field(default_factory=dict, hash=False)
    keep: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    allow_incomplete: bool = False

    @classmethod
    def of(cls, options: SolveOptions | None = None, **changes) -> SolveOptions:
        """``options`` (default ones when None) with ``changes``; unknown names raise TypeError."""
        from lana.table_names import canonical_table  # ort-b1 and cpu-ort-b1 name one table

        options = dataclasses.replace(options or cls(), **changes)
        extra = {canonical_table(t): b for t, b in (options.extra_budgets or {}).items()}
        table = canonical_table(options.table) if options.table else None
        return dataclasses.replace(options, table=table, keep=tuple(options.keep), exclude=tuple(options.exclude),
                                   extra_budgets=extra)  # fmt: skip


def solve_library(path, budget: str | float, options: SolveOptions | None = None, **changes) -> Plan:
    """The best plan of a library under a latency budget (``lana solve``).

    Args:
        path: the library .h5 file.
        budget: ``"0.5x"`` (of the teacher's predicted latency on the table), ``"3.2ms"`` or ms.
        options: :class:`SolveOptions` (table, score, solver, limits, keep/exclude patterns).
        **changes: fields of :class:`SolveOptions` to set on top (``table="cpu-b1"``).

    Raises:
        lana.solver.InfeasibleBudget: no plan meets the constraints; it carries the minimum
            achievable latency and the binding constraints.
    """
    problem, settings = _setup(path, SolveOptions.of(options, **changes))
    return _solve(problem, budget, settings)[0]


def _solve(
    problem: Problem,
    budget: str | float,
    settings: Mapping[str, Any],
    avoid: Sequence[Sequence[int]] = (),
    min_diff: int = 1,
) -> tuple[Plan, tuple[int, ...]]:
    """Solves a loaded, restricted problem; returns the plan and its candidate indices."""
    from lana import solver as ilp

    teacher_ms = settings["teacher_ms"]
    budget_ms = parse_budget(budget, teacher_ms.get(problem.table))
    extra_ms = {t: parse_budget(b, teacher_ms.get(t)) for t, b in settings["extra_budgets"].items()}
    solution = ilp.solve(
        problem,
        budget_ms,
        solver=settings["solver"],
        max_params=settings["max_params"],
        max_macs=settings["max_macs"],
        extra_budgets_ms=extra_ms,
        avoid=avoid,
        min_diff=min_diff,
    )
    choice = solution.choice
    plan = Plan(
        model=problem.model,
        table=problem.table,
        score=problem.score,
        budget_ms=budget_ms,
        choices=tuple((layer, problem.specs[l][c]) for l, (layer, c) in enumerate(zip(problem.layers, choice))),
        predicted_latency_ms=solution.latency_ms[problem.table],
        predicted_drop=solution.objective,
        solver=solution.solver,
        solve_time_s=solution.solve_time_s,
        latency_ms=dict(solution.latency_ms),
        params=solution.params,
        macs=solution.macs,
        layer_latency_ms=tuple(float(problem.latency[problem.table][l][c]) for l, c in enumerate(choice)),
        layer_score=tuple(float(problem.scores[l][c]) for l, c in enumerate(choice)),
        config={**settings, "budget": str(budget), "extra_budgets_ms": extra_ms},
    )
    return plan, choice


def solve_diverse(
    path, budget: str | float, k: int = 3, min_diff: int = 1, options: SolveOptions | None = None, **changes
) -> list[Plan]:
    """The ``k`` best plans that differ pairwise in at least ``min_diff`` layers (``--diverse``).

    Solves once, then again with a cut ``sum_l x[l, plan_l] <= L - min_diff`` per plan found, so
    each plan is the best that differs enough from all the earlier ones. Returns fewer than ``k``
    plans when no more exist. ``options`` and ``changes`` are those of `solve_library`.
    """
    if k < 1 or min_diff < 1:
        raise ValueError(f"--diverse K and --min-diff D must be >= 1, got K={k}, D={min_diff}")
    from lana.solver import NoMorePlans

    problem, settings = _setup(path, SolveOptions.of(options, **changes))
    plans, avoid = [], []
    for rank in range(1, k + 1):
        try:
            plan, choice = _solve(problem, budget, settings, avoid, min_diff)
        except NoMorePlans:
            break
        plans.append(dataclasses.replace(plan, config={**plan.config, "diverse_rank": rank, "min_diff": min_diff}))
        avoid.append(choice)
    return plans


def pareto(path, budgets: Sequence[str | float], options: SolveOptions | None = None, **changes) -> list[Plan]:
    """The best plan at each budget (``lana pareto``): the predicted accuracy-latency front.

    Budgets that no plan meets are skipped; if none is met, the last `InfeasibleBudget` is raised.
    ``options`` and ``changes`` are those of `solve_library`. The library is read once.
    """
    from lana.solver import InfeasibleBudget

    problem, settings = _setup(path, SolveOptions.of(options, **changes))
    plans, error = [], None
    for budget in budgets:
        try:
            plans.append(_solve(problem, budget, settings)[0])
        except InfeasibleBudget as exc:
            error = exc
    if not plans and error is not None:
        raise error
    return plans


def plot_pareto(plans: Sequence[Plan], png_path) -> Path:
    """Draws predicted drop against predicted latency, one point per plan, into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state
    from matplotlib.figure import Figure

    if not plans:
        raise ValueError("no plans to plot")
    first = plans[0]
    points = sorted((p.predicted_latency_ms, p.predicted_drop) for p in plans)
    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([x for x, _ in points], [y for _, y in points], "o-", drawstyle="steps-post")
    teacher_ms = first.config.get("teacher_ms", {}).get(first.table)
    if teacher_ms:
        axes.axvline(teacher_ms, color="grey", linestyle="--", label=f"teacher {teacher_ms:.3g} ms")
        axes.legend()
    axes.set_xlabel(f"predicted latency on {first.table} (ms)")
    axes.set_ylabel(f"predicted drop ({first.score})")
    axes.set_title(f"{first.model}: predicted accuracy-latency front")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    png_path = Path(png_path)
    figure.savefig(png_path, format="png")
    return png_path


def plan_errors(plan: Plan, layers: Sequence[str], specs: Sequence[Sequence[str]], model: str | None = None,
                complete: bool = True) -> list[str]:  # fmt: skip
    """Everything about ``plan`` that does not fit a library of ``layers`` with candidates
    ``specs`` (and teacher ``model``, when given); ``complete``: every layer must be named."""
    errors = []
    if model is not None and plan.model != model:
        errors.append(f"it is a plan for {plan.model!r}, the library's teacher is {model!r}")
    named = [layer for layer, _ in plan.choices]
    unknown = [layer for layer in named if layer not in layers]
    if unknown:
        errors.append(f"it names layers the library does not have: {', '.join(unknown)}")
    missing = [layer for layer in layers if layer not in named]
    if complete and missing:
        errors.append(f"it has no choice for layer(s) {', '.join(missing)} (a plan names every layer)")
    twice = sorted({layer for layer in named if named.count(layer) > 1})
    if twice:
        errors.append(f"it names layer(s) {', '.join(twice)} more than once")
    index = {name: i for i, name in enumerate(layers)}
    bad = [f"{layer}: {spec}" for layer, spec in plan.choices if layer in index and spec not in specs[index[layer]]]
    if bad:
        errors.append(f"it chooses candidates the library does not hold ({'; '.join(bad)})")
    return errors


def verify_plan(plan: Plan, path) -> Plan:
    """``plan`` checked against the library at ``path`` before any work is done on it, with its
    predictions (latency on every table, drop, params, MACs) recomputed from the library.

    A plan edited by hand, or solved on another library, is refused with one message naming all
    that does not fit (a table or score kind the library lacks is named on its own, by the one
    read of the library); predictions that differ from the library's are replaced (and said so), so
    that a student never carries stale ones.

    Raises:
        ValueError: another teacher, a layer missing, unknown or twice, an unknown candidate, or
            a table or score kind the library does not have.
        lana.library.LibraryError: the library is missing or damaged.
    """
    problem = load_problem(path, plan.table or None, plan.score or None, allow_incomplete=True)
    errors = plan_errors(plan, problem.layers, problem.specs, problem.model)
    if errors:
        raise ValueError(f"the plan does not fit {path}: " + "; ".join(errors))
    specs = plan.specs
    choices = tuple((layer, specs[layer]) for layer in problem.layers)
    choice = [problem.specs[l].index(spec) for l, (_, spec) in enumerate(choices)]
    fresh = dataclasses.replace(
        plan,
        choices=choices,
        table=problem.table,
        score=problem.score,
        predicted_latency_ms=problem.predicted_latency_ms(choice),
        predicted_drop=problem.predicted_drop(choice),
        latency_ms={t: problem.predicted_latency_ms(choice, t) for t in problem.tables},
        params=problem.total_params(choice),
        macs=problem.total_macs(choice),
        layer_latency_ms=tuple(float(problem.latency[problem.table][l][c]) for l, c in enumerate(choice)),
        layer_score=tuple(float(problem.scores[l][c]) for l, c in enumerate(choice)),
    )
    stale = [
        f"{what} {old:.6g} -> {new:.6g}"
        for what, old, new in (
            ("latency ms", plan.predicted_latency_ms, fresh.predicted_latency_ms),
            ("drop", plan.predicted_drop, fresh.predicted_drop),
        )
        if not math.isclose(old, new, rel_tol=1e-6, abs_tol=1e-9)
    ]
    if stale:
        log.warning("the plan's predictions differ from %s's (%s): the library's are kept", path, ", ".join(stale))
    return fresh


def _setup(path, options: SolveOptions):
    """Loads the problem, records the teacher's latencies (before --exclude may drop `teacher`)
    and restricts it; returns it with the run's settings."""
    full = load_problem(path, options.table, options.score, allow_incomplete=options.allow_incomplete)
    unknown = [t for t in options.extra_budgets if t not in full.tables]
    if unknown:
        raise ValueError(
            f"--extra-budget names table(s) {', '.join(unknown)} that {path} does not have; its tables are "
            f"{', '.join(full.tables)} (`lana latency {path} TABLE` adds one)"
        )
    for table in dict.fromkeys([full.table, *options.extra_budgets]):
        if table in full.noisy:
            log.warning("%s", full.noisy[table])
    return restrict(full, options.keep, options.exclude), _settings(full, options)


def _settings(problem: Problem, options: SolveOptions) -> dict[str, Any]:
    """The run's configuration, kept in every plan's ``config``."""
    from lana import __version__

    has_teacher = all(TEACHER in specs for specs in problem.specs)
    return {
        **dataclasses.asdict(options),
        "keep": list(options.keep),
        "exclude": list(options.exclude),
        "extra_budgets": dict(options.extra_budgets),
        "library": problem.source,
        "noisy_tables": sorted(problem.noisy),
        "teacher_ms": {t: problem.teacher_ms(t) for t in problem.tables} if has_teacher else {},
        "teacher_measured_ms": dict(problem.teacher_measured_ms),
        "lana_version": __version__,
    }
