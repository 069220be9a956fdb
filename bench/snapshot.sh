#!/usr/bin/env bash
# Run the benchmark from a `git archive` snapshot of a commit, so that the figures come from
# committed code and the work tree can change meanwhile (issue 25 item 6).
#   bench/snapshot.sh COMMIT [python3 -m bench arguments...]
# Caches go to the checkout's runs/bench, results to its bench/results/ (committed), the report to
# its BENCHMARKS.md. Prints the load
# average before and after: a benchmark's timings are only as good as the machine is quiet.
set -euo pipefail
commit=$(git rev-parse --short "${1:?usage: bench/snapshot.sh COMMIT [bench arguments]}")
shift
repo=$(git rev-parse --show-toplevel)
snap=${TMPDIR:-/tmp}/lana-snapshot-$commit
rm -rf "$snap" && mkdir -p "$snap"
git -C "$repo" archive "$commit" | tar -x -C "$snap"
# lana.candidates and lana.solver live at the top (pyproject's package-dir): link them into lana/
ln -s ../candidates "$snap/lana/candidates"
ln -s ../solver "$snap/lana/solver"
echo "snapshot of $commit in $snap; load average $(cut -d' ' -f1-3 /proc/loadavg)"
cd "$snap"  # python3 -m puts the working directory first on sys.path: the snapshot's code
LANA_COMMIT=$commit PYTHONPATH="$snap" HF_HUB_OFFLINE=1 python3 -m bench --out "$repo/runs/bench" --results "$repo/bench/results" \
    --report "$repo/BENCHMARKS.md" "$@"
echo "done; load average $(cut -d' ' -f1-3 /proc/loadavg)"
