"""The final pass's ratios that decide a verdict, timed paired (:func:`lana.paired.time_relative`).

The interleaved pass (``bench._measure_all``) gives every model's milliseconds and speed-ups on
every table. A verdict needs two ratios per budget on the budget's table: lana's student to the
teacher (does it land in [0.95, 1.0] of the budget?) and each other model to lana's student (is it
matched?). Dividing two medians of that pass moved both by 10-25% on the 2-core AMD EPYC VM (W2,
1f71e5e: the teacher at 92.3 ms with an interquartile range of 23.9 ms); here each is timed paired,
the two models alternating in short blocks until the ratio's 95% interval is within 1% either side
(up to 60 blocks), every pair of a table in turn.

No cached row depends on this module (it times, it trains nothing), so it is in no stage of
:data:`bench.provenance.STAGES`: changing it re-times a rerun and retrains nothing.
"""

from __future__ import annotations

import logging

__all__ = ["paired_ratios"]

log = logging.getLogger(__name__)


def paired_ratios(run) -> None:
    """Add ``row["paired"]`` to every row of ``run`` at a budget where lana has a student:
    ``{"table": the budget's table, "vs_teacher": Relative dict}`` on lana's row, ``{"table": ...,
    "vs_lana": Relative dict}`` on the others' seed-0 rows (the models the run keeps). All pairs of
    a table take their blocks in turn (:func:`lana.paired.time_pairs`), so that every ratio spans
    the same minutes of the machine."""
    from bench.workloads import budget_table
    from lana.paired import time_pairs

    w = run.w
    by_table: dict[str, dict] = {}
    for budget in dict.fromkeys(r["budget"] for r in run.rows if r["method"] == "lana"):
        lana = run.models.get(f"lana@{budget}")
        if lana is None:
            continue
        pairs = by_table.setdefault(budget_table(w, budget), {})
        pairs[("lana", budget)] = (lana, run.teacher)
        for row in run.rows:
            key = f"{row['method']}@{budget}"
            if row["budget"] == budget and row["method"] != "lana" and not row.get("seed") and key in run.models:
                pairs[(row["method"], budget)] = (run.models[key], lana)
    for table, pairs in by_table.items():
        log.info("final pass: %d ratios timed paired on %s", len(pairs), table)
        found = time_pairs(pairs, w.input_shape, table, threads=w.threads)
        for row in run.rows:
            timed = found.get((row["method"], row["budget"]))
            if timed is None or row.get("seed"):
                continue
            side = "vs_teacher" if row["method"] == "lana" else "vs_lana"
            row["paired"] = {"table": table, side: timed.as_dict()}
            log.info("%s %s: %.4f x %s [%.4f, %.4f], %d blocks", row["budget"], row["method"], timed.ratio,
                     side[3:], timed.low, timed.high, timed.blocks)  # fmt: skip
