"""``python3 -m bench.relabel CACHE --from COMMIT [--stage competitors] [--dry-run]``: carry cached
rows over a change of a stage's *file list* that changed none of its files.

A stage's digest covers the files :data:`bench.provenance.STAGES` lists. When that list is
corrected (a file the stage never ran dropped from it), every row cached under the old digest
looks stale, although it was made by exactly the code the corrected list describes. This module
checks that claim instead of assuming it, then relabels:

1. ``COMMIT``'s tree (``git archive``) is digested twice: by its own ``bench/provenance.py``
   (the digest its rows carry) and by this tree's definition;
2. the second must equal this tree's digest of the stage: the stage's files, as listed now, are
   byte for byte those that made the rows;
3. then every ``row.json`` and ``failure.json`` under ``CACHE`` keyed by the old digest is
   rewritten (atomically) with the new one, and the row records ``relabelled: {from, commit}``,
   which travels into the results and the report's provenance.

Nothing else is touched; a row of any other digest is left as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.provenance import ROOT, STAGES, code_digest, commit

__all__ = ["digests_at", "relabel"]


def digests_at(rev: str, root: str | os.PathLike = ROOT) -> tuple[dict[str, str], dict[str, str]]:
    """``(own, ours)``: ``rev``'s stage digests by its own definition, and by this tree's."""
    with tempfile.TemporaryDirectory(prefix="lana-relabel-") as tmp:
        archive = subprocess.run(["git", "archive", rev], cwd=root, capture_output=True, check=True, timeout=120)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True, timeout=120)
        script = "import json; from bench.provenance import code_digests; print(json.dumps(code_digests()))"
        run = subprocess.run([sys.executable, "-c", script], cwd=tmp, env={**os.environ, "PYTHONPATH": tmp},
                             capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
        own = json.loads(run.stdout.strip().splitlines()[-1])
        ours = {stage: code_digest(stage, tmp) for stage in STAGES}
    return own, ours


def relabel(cache: str | os.PathLike, rev: str, stage: str = "competitors", dry_run: bool = False,
            root: str | os.PathLike = ROOT) -> list[Path]:  # fmt: skip
    """Relabel ``stage``'s rows under ``cache`` made at ``rev`` to this tree's digest; the files changed.

    Raises:
        ValueError: the stage's files differ between ``rev`` and this tree (its rows are not this
            code's), or this tree has uncommitted changes to them.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    if commit(root).endswith("+dirty"):
        raise ValueError("the work tree has uncommitted changes: commit first, so the new digest is a commit's")
    own, ours = digests_at(rev, root)
    now = code_digest(stage, root)
    if ours[stage] != now:
        raise ValueError(f"{stage}: the files it lists differ between {rev} ({ours[stage]}) and this tree ({now}): "
                         f"rows made at {rev} are not this code's; rerun them")  # fmt: skip
    old = own[stage]
    changed: list[Path] = []
    if old == now:
        return changed
    from lana.files import write_json

    for path in sorted([*Path(cache).rglob("row.json"), *Path(cache).rglob("failure.json")]):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or (data.get("key") or {}).get("code") != old:
            continue
        data["key"]["code"] = now
        if isinstance(data.get("row"), dict):
            data["row"] = {**data["row"], "code": now, "relabelled": {"from": old, "commit": rev}}
        if not dry_run:
            write_json(path, data)
        changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.relabel", description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", help="the benchmark's cache (runs/bench)")
    parser.add_argument("--from", dest="rev", required=True, help="the commit the cached rows were made at")
    parser.add_argument("--stage", default="competitors", choices=sorted(STAGES))
    parser.add_argument("--dry-run", action="store_true", help="list what would be relabelled")
    args = parser.parse_args(argv)
    try:
        changed = relabel(args.cache, args.rev, args.stage, args.dry_run)
    except (ValueError, subprocess.CalledProcessError) as error:
        parser.error(str(error))
    for path in changed:
        print(("would relabel " if args.dry_run else "relabelled ") + str(path))
    print(f"{len(changed)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
