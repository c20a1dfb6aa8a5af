#!/usr/bin/env bash
# The GPU benchmark, in one command, under 8 minutes, on a machine with an NVIDIA GPU and the packages:
#
#   bash bench/gpu.sh                 # SD 1.5 random weights, 512x512, 20 steps, batch 1/4/8/16,
#                                     # eager and compiled, against the naive diffusers baseline
#   bash bench/gpu.sh --cpu-smoke     # the same script on the tiny model on a CPU (checks the script)
#   bash bench/gpu.sh --sdxl          # SDXL random weights, 1024x1024, 20 steps, batch 1/2/4/8, eager,
#                                     # against a plain diffusers SDXL pipeline (with --cpu-smoke: tiny SDXL)
#
# Steps: check the GPU, build the random SD 1.5 model once (python -m engine make-model --arch sd15
# --random, cached in $BENCH_MODEL_DIR), run python -m bench.engine, then write a JSON summary
# (bench/_gpu_summary.py). Every step runs under what is left of the time budget; a run cut short still
# writes its summary, with "complete": false and what is missing.
#
# Environment:
#   PYTHON            interpreter (default .venv/bin/python if present, else python3)
#   BENCH_OUT         output folder (default $OUT if set, else bench/results/gpu-<UTC time>)
#   BENCH_MODEL_DIR   where the random model is built / reused (default ${TMPDIR:-/tmp}/imaginebot-bench/<arch>)
#   BENCH_BUDGET_S    total seconds (default 480 = 8 minutes)
#   BENCH_MODES       modes (default eager,compiled; cpu-smoke: eager)
#   BENCH_BATCHES     batch sizes (default 1,4,8,16; cpu-smoke: 1,2)
set -euo pipefail

cd "$(dirname "$0")/.."

kind=gpu
sdxl=0
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) kind=cpu-smoke ;;
        --sdxl) sdxl=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

start=$(date +%s)
budget=${BENCH_BUDGET_S:-480}
left() { echo $(( budget - ($(date +%s) - start) )); }

if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3
fi

out=${BENCH_OUT:-${OUT:-bench/results/gpu-$(date -u +%Y%m%d-%H%M%S)}}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error PYTHONUNBUFFERED=1

if [[ $kind == gpu ]]; then
    arch=sd15 device=cuda dtype=fp16 size=512 steps=20
    batches=${BENCH_BATCHES:-1,4,8,16} modes=${BENCH_MODES:-eager,compiled}
    images=32 baseline_images=16 repeats=1
    if ! command -v nvidia-smi >/dev/null; then
        echo "gpu.sh: no nvidia-smi here; this benchmark needs an NVIDIA GPU (or run --cpu-smoke)" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/nvidia-smi.txt"
    if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu.sh: $py has no CUDA-enabled torch (set PYTHON to one that has)" >&2
        exit 2
    fi
else
    arch=tiny device=cpu dtype=fp32 size=64 steps=2
    batches=${BENCH_BATCHES:-1,2} modes=${BENCH_MODES:-eager}
    images=4 baseline_images=2 repeats=1  # checks the script, not the speed
    : > "$out/nvidia-smi.txt"
fi
if (( sdxl )) && [[ $kind == gpu ]]; then
    # SDXL's UNet is about 3x SD 1.5's per pixel at 4x the pixels: smaller batches, fewer images, eager only
    # (compiling SDXL takes minutes of the budget).
    arch=sdxl size=1024 steps=20 batches=${BENCH_BATCHES:-1,2,4,8} modes=${BENCH_MODES:-eager}
    images=16 baseline_images=4
elif (( sdxl )); then
    arch=tiny-sdxl
fi

model=${BENCH_MODEL_DIR:-${TMPDIR:-/tmp}/imaginebot-bench/$arch-random}
build_s=0
rc=0

summarize() {
    "$py" -m bench._gpu_summary --engine "$out/engine.json" --out "$out/summary.json" --kind "$kind" \
        --build-seconds "$build_s" --elapsed-seconds "$(( $(date +%s) - start ))" \
        --budget-seconds "$budget" --exit-code "$rc" --nvidia-smi "$out/nvidia-smi.txt" \
        --batches "$batches" --modes "$modes" >/dev/null
    echo "== summary: $out/summary.json (whole run $(( $(date +%s) - start ))s)"
    "$py" - "$out/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"complete: {s['complete']}" + (f"  missing: {', '.join(s['missing'])}" if s.get("missing") else ""))
for name, value in (s.get("targets") or {}).items():
    print(f"  {name}: {value}")
EOF
}

# Seconds left for a step, keeping $1 seconds in reserve (at least 1, so timeout never gets 0 or less).
budget_for() { local s=$(( $(left) - $1 )); if (( s > 0 )); then echo "$s"; else echo 1; fi; }

if [[ ! -f "$model/model_index.json" ]]; then
    echo "== building the $arch model with random weights in $model"
    t0=$(date +%s)
    rm -rf "$model.partial"
    mkdir -p "$(dirname "$model")"
    # Built beside the target and renamed: a build cut short is never taken for a model next time.
    if [[ $arch == tiny-sdxl ]]; then
        timeout "$(budget_for 60)" "$py" -m engine make-tiny-model --arch sdxl "$model.partial" || rc=$?
    else
        timeout "$(budget_for 60)" "$py" -m engine make-model --arch "$arch" --random "$model.partial" || rc=$?
    fi
    build_s=$(( $(date +%s) - t0 ))
    if [[ $rc -ne 0 ]]; then
        echo "gpu.sh: building the model failed or ran out of time (exit $rc)" >&2
        summarize
        exit "$rc"
    fi
    mv "$model.partial" "$model"
    echo "   built in ${build_s}s"
else
    echo "== reusing $model"
fi

echo "== engine sweep: ${size}x${size}, $steps steps, batches $batches, modes $modes, $device $dtype"
# SIGINT first: bench.engine has written its JSON after every measured point, so nothing measured is lost.
timeout --signal=INT --kill-after=10 "$(budget_for 15)" \
    "$py" -m bench.engine --model "$model" --device "$device" --dtype "$dtype" \
        --size "$size" --steps "$steps" --batches "$batches" --modes "$modes" \
        --images "$images" --baseline-images "$baseline_images" --repeats "$repeats" \
        --json "$out/engine.json" || rc=$?
if [[ $rc -eq 124 ]]; then
    echo "gpu.sh: the engine sweep ran out of the ${budget}s budget; the summary keeps what it measured" >&2
fi
summarize
exit "$rc"
