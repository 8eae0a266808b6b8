#!/bin/bash
# coe-policy on CPUs without AVX-512, under QEMU's user-mode emulator (which implements no AVX-512
# at all, so a pass means the run-time dispatch of gemm and of the kernels' `pulp` took the
# narrower paths and that those agree): the reference check (`tests/reference.rs`: logits within
# 1e-4 of transformers', 128 greedy ids) as a Haswell (AVX2 + FMA), then the unit and tiny-model
# tests (kernels against burn's ops, batched against single rows) as a Haswell and as a CPU with
# neither AVX2 nor FMA. Slow: the emulated reference check took 1,052 s on 2026-12-05.
#
#   benches/cpu/avx2-fallback.sh          (needs `cargo xtask model`; installs qemu-user if absent)
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v qemu-x86_64 > /dev/null; then
  echo "installing qemu-user (Debian package) for qemu-x86_64" >&2
  ${SUDO:-} apt-get install -y -q qemu-user > /dev/null
fi
declare -A binary
while read -r name path; do
  binary[$name]=$path
done < <(cargo test --release -p coe-policy --no-run --message-format=json 2> /dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message.get("executable"):
        print(message["target"]["name"], message["executable"])')
cd crates/policy
run() {
  local cpu=$1 test=$2
  echo "== $test under qemu-x86_64 -cpu $cpu"
  local start
  start=$(date +%s)
  # CI=true: a missing model fails the reference test instead of skipping it.
  CI=true qemu-x86_64 -cpu "$cpu" "${binary[$test]}" --test-threads 1 2>&1 | grep -v "TCG doesn't support"
  echo "passed in $(($(date +%s) - start)) s"
}
run Haswell reference
for cpu in Haswell "Haswell,-avx2,-fma"; do
  run "$cpu" coe_policy
  run "$cpu" tiny
done
