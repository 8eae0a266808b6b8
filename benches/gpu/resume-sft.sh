#!/usr/bin/env bash
# Finishes on a CUDA machine an SFT run begun on the CPU: the run's checkpoint, `coe` built with
# `--features cuda`, the base model and the demonstrations travel in parts small enough for a
# channel that limits each transfer (the device tool: 64 MiB a call with the checkout), and the
# run resumes there with `coe train sft --device cuda --resume`. Resuming is exact in data order
# and optimiser state (the trainer's checkpoint); only float rounding differs from the CPU.
#
# Here (a checkout with the cache):
#   cargo build --release -p coe-cli --bin coe --no-default-features --features coe-cli/cuda
#   benches/gpu/resume-sft.sh pack RUN_DIR [PART_BYTES]    # -> .device/resume/part-K/
# There (the same checkout, each part carried by one call; the machine keeps /tmp between calls):
#   benches/gpu/resume-sft.sh receive K                     # stores part K in /tmp
#   benches/gpu/resume-sft.sh run CONFIG [SECONDS]          # unpacks, resumes, packs the result
# `run` resumes with CONFIG's settings except `parallel_parts = 1` (the GPU takes one
# micro-batch at a time; the step's gradient does not depend on it). What it leaves in $OUT
# (default ./gpu-out): check.log and result.tar.NN parts of 16 MB holding metrics.jsonl, and
# the final adapter with two snapshots when the run finished, else the checkpoint (resume it
# again, on either device). Join with `cat result.tar.* | tar -x`. `coe` is built without
# default features so that it leaves out the built-in default policy (19.6 MB it never uses).
set -uo pipefail
what=${1:?pack|receive|run}
work=/tmp/coe-gpu-resume
parts_dir=.device/resume

case "$what" in
pack)
    run_dir=${2:?RUN_DIR}
    part_bytes=${3:-50000000}
    cache=${COE_CACHE_DIR:-$HOME/.cache/coe}
    target=${CARGO_TARGET_DIR:-target}
    model=${COE_MODEL:-$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
    for needed in "$target/release/coe" "$model" "$cache/data/sft-train.jsonl" \
        "$run_dir/checkpoint/state.json" "$run_dir/metrics.jsonl"; do
        [ -f "$needed" ] || { echo "missing $needed" >&2; exit 1; }
    done
    grep -aq nvrtcCompileProgram "$target/release/coe" \
        || { echo "coe was not built with --features cuda" >&2; exit 1; }
    staging=$(mktemp -d)
    mkdir -p "$staging/cache/models" "$staging/cache/data" "$staging/run"
    { cp "$target/release/coe" "$staging/coe" && strip "$staging/coe" \
        && cp "$model" "$staging/cache/models/" \
        && cp "$cache/data/sft-train.jsonl" "$staging/cache/data/" \
        && cp -r "$run_dir/checkpoint" "$run_dir/metrics.jsonl" "$staging/run/"; } || exit 1
    cat "$staging/run/checkpoint/state.json"; echo
    rm -rf "$parts_dir" && mkdir -p "$parts_dir"
    tar -cf - -C "$staging" . | xz -6 -T2 | split -d -b "$part_bytes" - "$parts_dir/payload." \
        || exit 1
    rm -rf "$staging"
    for part in "$parts_dir"/payload.*; do
        dir="$parts_dir/part-${part##*.}"
        mkdir -p "$dir" && mv "$part" "$dir/"
    done
    du -b "$parts_dir"/part-*/*
    ;;
receive)
    k=${2:?K}
    mkdir -p "$work/parts"
    cp "$parts_dir/part-$k"/payload.* "$work/parts/" && ls -l "$work/parts"
    ;;
run)
    config=${2:?CONFIG}
    seconds=${3:-420}
    out=$(realpath -m "${OUT:-$PWD/gpu-out}")
    mkdir -p "$out"
    log() { echo "[$(date +%T)] $*" | tee -a "$out/check.log"; }
    [ -d "$parts_dir" ] && for dir in "$parts_dir"/part-*; do cp "$dir"/payload.* "$work/parts/" 2>/dev/null; done
    # Marked only once the whole stream unpacked: a part missing or cut leaves no half state.
    if [ ! -e "$work/.unpacked" ]; then
        log "unpacking $(ls "$work"/parts/payload.* | wc -l) parts"
        unxz() {
            if command -v xz >/dev/null; then xz -dc; else
                python3 -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)"
            fi
        }
        cat "$work"/parts/payload.* | unxz | tar -x -C "$work" || { log "unpacking failed"; exit 1; }
        touch "$work/.unpacked"
    fi
    if ! ldconfig -p | grep -q libnvrtc; then
        nvrtc=$(ls /usr/local/cuda*/lib64/libnvrtc.so* /usr/local/cuda*/targets/*/lib/libnvrtc.so* \
            /opt/*/.venv/lib/python3*/site-packages/nvidia/cu*/lib/libnvrtc.so* 2>/dev/null | head -1)
        [ -n "$nvrtc" ] && export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        log "NVRTC: ${nvrtc:-not found}"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/check.log"
    export COE_CACHE_DIR="$work/cache"
    # One micro-batch at a time (the default is 2): replaced where the config sets it, else added.
    if grep -q '^parallel_parts *=' "$config"; then
        sed 's/^parallel_parts *=.*/parallel_parts = 1/' "$config" > "$work/config.toml"
    elif grep -q '^\[optim\]' "$config"; then
        sed 's/^\[optim\]$/[optim]\nparallel_parts = 1/' "$config" > "$work/config.toml"
    else
        { cat "$config"; printf '\n[optim]\nparallel_parts = 1\n'; } > "$work/config.toml"
    fi
    log "resuming from step $(grep -o '"step": *[0-9]*' "$work/run/checkpoint/state.json" | grep -o '[0-9]*$')"
    timeout "$seconds" "$work/coe" train sft --device cuda --config "$work/config.toml" \
        --out "$work/run" --resume >> "$out/check.log" 2>&1
    log "coe train sft: exit $?"
    tail -2 "$work/run/metrics.jsonl" | tee -a "$out/check.log"
    cd "$work/run" || exit 1
    if [ -f adapter.safetensors ]; then
        sha256sum adapter.safetensors | tee -a "$out/check.log"
        # The result channel takes 64 MB: the final adapter and two snapshots, the last but one
        # and the one before (the last is too near the final adapter to be another candidate).
        kept=$(ls snapshots/step-*.safetensors 2>/dev/null | sort -t- -k2 -n | tail -3 | head -2)
        tar -cf - metrics.jsonl config.toml adapter.safetensors $kept | split -d -b 16000000 - "$out/result.tar."
    else
        tar -cf - metrics.jsonl checkpoint | split -d -b 16000000 - "$out/result.tar."
    fi
    log "packed: $(ls "$out")"
    ;;
*)
    echo "usage: $0 pack RUN_DIR [PART_BYTES] | receive K | run CONFIG [SECONDS]" >&2
    exit 2
    ;;
esac
