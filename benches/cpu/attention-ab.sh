#!/bin/bash
# Two builds of the same benchmarks alternated in one run, nothing else on the cores: an SFT
# step (train-bench, 4 demonstrations) and prefill/decode (policy-bench, flex).
#
#   benches/cpu/attention-ab.sh OLD_DIR NEW_DIR [ROUNDS]
#
# Each DIR holds `train-bench` and `policy-bench` built from one commit, e.g. for the blocked
# causal attention (cba04bc) against the masked square before it (d5de650):
#   git worktree add /tmp/old d5de650 && (cd /tmp/old && cargo build --release -p coe-benches \
#     --bin train-bench --bin policy-bench --features all-backends)
# and the same at cba04bc, then copy each build's two binaries into its DIR.
set -euo pipefail
old=${1:?OLD_DIR}
new=${2:?NEW_DIR}
rounds=${3:-3}
date
for r in $(seq "$rounds"); do
  for dir in "$old" "$new"; do
    echo "== train $dir round $r"
    "$dir/train-bench" --count 4 --repeats 1 2>/dev/null | tail -1
  done
done
for r in $(seq "$rounds"); do
  for dir in "$old" "$new"; do
    echo "== policy $dir round $r"
    "$dir/policy-bench" --backend flex --repeats 3 2>/dev/null | tail -1
  done
done
date
