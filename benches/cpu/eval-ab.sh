#!/bin/bash
# Two `coe` binaries on the same evaluation, alternated in one run with nothing else on the
# cores: 4 mbpp-synthetic-validation tasks x 4 samples at temperature 1, 10 turns, the default
# policy, one thread each (RAYON_NUM_THREADS=1, as `cargo xtask eval --jobs 2` runs them on 2
# cores). Prints each run's wall time and its episodes' turns and solves, which must agree.
#
#   benches/cpu/eval-ab.sh OLD_COE NEW_COE [ROUNDS]
set -euo pipefail
old=${1:?OLD_COE}
new=${2:?NEW_COE}
rounds=${3:-2}
tasks=$(dirname "$0")/../../fixtures/eval/mbpp-synthetic-validation.jsonl
out=$(mktemp -d)
date
for r in $(seq "$rounds"); do
  for which in old new; do
    coe=$old
    [ "$which" = new ] && coe=$new
    start=$(date +%s.%N)
    RAYON_NUM_THREADS=1 "$coe" eval "$tasks" --limit 4 --samples 4 --json > "$out/$which-$r.json" 2>/dev/null
    end=$(date +%s.%N)
    python3 - "$out/$which-$r.json" "$which" "$r" "$(echo "$end - $start" | bc)" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
tasks = summary["per_task"]
print(f"{sys.argv[2]} round {sys.argv[3]}: {float(sys.argv[4]):.1f} s; turns",
      [t["turns"] for t in tasks], "solved", [t["solved"] for t in tasks])
PY
  done
done
