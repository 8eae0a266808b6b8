#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA GPU, python3 with torch + transformers + peft, and
# neither a Rust toolchain nor a network: run from a checkout, with the parts that
# `cargo xtask gpu-bundle` made in BUNDLE (default .device).
#
#   benches/gpu/check.sh [BUNDLE] [checks|sft|all] [SFT_SECONDS] [EVAL_SHARDS]
#
# checks: the reference check on CUDA with prefill, decode and batched decode speed
#         (policy-bench --backend cuda), then one LoRA training step's time on SmolLM2-135M and
#         on a Llama-3.2-1B-shaped random model, coe against transformers + PEFT on the same
#         card (train-bench --device cuda).
# sft:    the campaign's SFT on the GPU (fixtures/configs/campaign-sft-gpu.toml): a 6-step
#         probe times a step, then as many steps as fit SFT_SECONDS (default 240), then a greedy
#         evaluation of the adapter on the validation set in EVAL_SHARDS shards (default 4; 0:
#         none) while time remains.
# Results go to $OUT (default ./gpu-out): check.log; results.tar.gz (JSON, tables, metrics and
# traces), packed again after each stage so a run stopped midway keeps what it finished; the
# adapter in parts of 15 MB (join with cat).
set -uo pipefail
bundle=${1:-.device}
what=${2:-all}
sft_seconds=${3:-240}
eval_shards=${4:-4}
out=${OUT:-$PWD/gpu-out}
work=/tmp/coe-gpu
res="$work/results"
mkdir -p "$out" "$work" "$res"
log() { echo "[$(date +%T)] $*" | tee -a "$out/check.log"; }
pack() { tar -czf "$out/results.tar.gz" -C "$res" . ; }

if [ ! -x "$work/bin/coe" ]; then
    log "unpacking $(ls "$bundle"/bundle.tar.* | wc -l) parts"
    cat "$bundle"/bundle.tar.* | tar -x -C "$work" || { log "unpacking failed"; exit 1; }
    unxz() {
        if command -v xz >/dev/null; then xz -dc "$1"; else
            python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)" "$1"
        fi
    }
    unxz "$work/bin.tar.xz" | tar -x -C "$work" && rm "$work/bin.tar.xz"
    unxz "$work/cache/data/sft-train.jsonl.xz" > "$work/cache/data/sft-train.jsonl" \
        && rm "$work/cache/data/sft-train.jsonl.xz"
    chmod +x "$work"/bin/*
    python3 -m pip install -q --no-index --no-deps --target "$work/site" "$work"/wheels/*.whl \
        || log "installing the gguf wheel failed"
fi
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}" COE_CACHE_DIR="$work/cache"
# burn-cuda loads libcuda and NVRTC at run time; a toolkit outside the loader's path is added.
if ! ldconfig -p | grep -q libnvrtc; then
    nvrtc=$(ls /usr/local/cuda*/lib64/libnvrtc.so* /usr/local/cuda*/targets/*/lib/libnvrtc.so* \
        /opt/*/.venv/lib/python3*/site-packages/nvidia/cu*/lib/libnvrtc.so* 2>/dev/null | head -1)
    [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    log "NVRTC: ${nvrtc:-not found}"
fi
# The bench binaries find fixtures/ and benches/python/ through the path of the checkout they
# were built in.
built_in=$(grep -ao '/[A-Za-z0-9_./+-]*/benches/python/train_peer.py' "$work/bin/train-bench" | head -1)
built_root=${built_in%/benches/python/train_peer.py}
if [ -n "$built_root" ] && [ ! -e "$built_root" ]; then
    mkdir -p "$(dirname "$built_root")" && ln -s "$PWD" "$built_root"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/check.log"

if [ "$what" = checks ] || [ "$what" = all ]; then
    log "policy-bench --backend cuda"
    timeout 180 "$work/bin/policy-bench" --backend cuda --repeats 2 --decode-tokens 64 \
        > "$res/policy-cuda.json" 2>> "$out/check.log"
    log "policy-bench: exit $?"; cat "$res/policy-cuda.json"; pack
    log "train-bench --device cuda (SmolLM2-135M)"
    timeout 180 "$work/bin/train-bench" --device cuda --python python3 --count 8 --repeats 2 \
        --parallel-parts 1 > "$res/train-135m.txt" 2>> "$out/check.log"
    log "train-bench 135M: exit $?"; cat "$res/train-135m.txt"; pack
    log "train-bench --device cuda --random-1b"
    # The peer builds the random 1B model on the CPU first, which takes it a while.
    timeout 200 "$work/bin/train-bench" --device cuda --random-1b --python python3 --count 8 \
        --repeats 1 --parallel-parts 1 > "$res/train-1b.txt" 2>> "$out/check.log"
    log "train-bench 1B: exit $?"; cat "$res/train-1b.txt"; pack
fi

if [ "$what" = sft ] || [ "$what" = all ]; then
    config=fixtures/configs/campaign-sft-gpu.toml
    log "SFT probe: 6 steps"
    timeout 120 "$work/bin/coe" train sft --device cuda --config "$config" --steps 6 \
        --out "$work/runs/probe" >> "$out/check.log" 2>&1
    per_step=$(python3 - "$work/runs/probe/metrics.jsonl" <<'PY'
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except OSError:
    rows = []
rows = [r for r in rows if r.get("phase") == "sft"]
# The first step pays for loading and kernel compilation: timed from the second.
if len(rows) >= 3:
    print(f'{(rows[-1]["elapsed_s"] - rows[1]["elapsed_s"]) / (len(rows) - 2):.3f}')
PY
)
    if [ -z "$per_step" ]; then
        log "SFT: the probe did not finish 3 steps (check.log says why); no SFT run"
        exit 1
    fi
    steps=$(python3 -c "print(max(10, int($sft_seconds / $per_step)))")
    log "SFT: $per_step s a step, $steps steps"
    timeout $((sft_seconds + 60)) "$work/bin/coe" train sft --device cuda --config "$config" \
        --steps "$steps" --out "$work/runs/sft" >> "$out/check.log" 2>&1
    log "SFT: exit $?"
    cp "$work/runs/sft/metrics.jsonl" "$res/sft-metrics.jsonl" 2>/dev/null
    cp "$work/runs/probe/metrics.jsonl" "$res/sft-probe-metrics.jsonl" 2>/dev/null; pack
    adapter="$work/runs/sft/adapter.safetensors"
    [ -f "$adapter" ] || adapter="$work/runs/sft/checkpoint/adapter.safetensors"
    if [ -f "$adapter" ]; then
        split -d -b 15000000 "$adapter" "$out/sft-adapter.safetensors."
        sha256sum "$adapter" | tee -a "$out/check.log"
        for ((shard = 0; shard < eval_shards; shard++)); do
            log "eval shard $shard/$eval_shards"
            timeout 100 "$work/bin/coe" eval fixtures/eval/mbpp-synthetic-validation.jsonl \
                --device cuda --adapter "$adapter" --workers 8 --batch 48 \
                --shard "$shard/$eval_shards" --json \
                --traces "$res/traces-$shard-of-$eval_shards.jsonl" \
                > "$res/summary-$shard-of-$eval_shards.json" 2>> "$out/check.log"
            log "eval shard $shard: exit $?"; cat "$res/summary-$shard-of-$eval_shards.json"; pack
        done
    fi
fi
log "done"
