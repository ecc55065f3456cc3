#!/usr/bin/env bash
# The one command a GPU device session runs, from the repo root, with `.devkit` carried
# (built here by `python bench/device_kit.py`; see README, "GPU checks"):
#
#   bash bench/device_run.sh                      # every check of bench/gpu_check.py (~12 min on an H200)
#   bash bench/device_run.sh --only e2e e2e-native   # any gpu_check.py options pass through
#   bash bench/device_run.sh --native-smoke       # instead: bench/e2e_native.py on the `small` case
#                                                 # (ours vs native; minutes on a CPU, seconds on a GPU)
#
# It unpacks the kit into $SEEDVR2_DEVKIT_WORK (/tmp/seedvr2-devkit): the wheels installed with
# `pip install --no-index --no-deps --target site`, ComfyUI 0.33.0's source as comfyui/; exports
# PYTHONPATH, SEEDVR2_COMFYUI_DIR, SEEDVR2_COMFYUI_PYTHON and PYTHONUNBUFFERED=1; checks that the
# native run's imports resolve (logged; a failure there shows up as check e2e-native's FAIL); runs
# gpu_check.py --json $OUT/gpu.json and tees everything into $OUT/device_run.log. $OUT unset:
# ./device-out. Exit status: gpu_check's (or e2e_native's). Without the kit it still runs
# gpu_check, whose e2e-native check then SKIPs with the reason.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/device-out}
KIT=${SEEDVR2_DEVKIT:-$PWD/.devkit}
WORK=${SEEDVR2_DEVKIT_WORK:-/tmp/seedvr2-devkit}
PY=$(command -v "${PYTHON:-python3}") || { echo "device_run: no ${PYTHON:-python3}" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
LOG=$OUT/device_run.log
exec > >(tee "$LOG") 2>&1
export PYTHONUNBUFFERED=1

echo "device_run: $(date -u +%FT%TZ) $(uname -m) $("$PY" -V 2>&1) at $PY; OUT=$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ -f "$KIT/wheels.tar.xz" ] && [ -f "$KIT/comfyui-0.33.0.tar.xz" ]; then
    rm -rf "$WORK" && mkdir -p "$WORK/site" || exit 2
    t0=$SECONDS
    tar -xJf "$KIT/wheels.tar.xz" -C "$WORK" && tar -xJf "$KIT/comfyui-0.33.0.tar.xz" -C "$WORK" \
        && "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
            "$WORK"/wheels/*.whl \
        || { echo "device_run: unpacking the kit failed" >&2; exit 2; }
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    export SEEDVR2_COMFYUI_DIR="$WORK/comfyui" SEEDVR2_COMFYUI_PYTHON="$PY"
    echo "device_run: kit unpacked in $((SECONDS - t0)) s: $(ls "$WORK/wheels" | tr '\n' ' ')"
    "$PY" - <<'EOF' || echo "device_run: WARNING: the native run's imports do not resolve (check e2e-native will fail)"
import os, sys, time
from pathlib import Path
import torch
sys.path.insert(0, "bench")
import e2e_native
t0 = time.perf_counter()
e2e_native.import_comfy(Path(os.environ["SEEDVR2_COMFYUI_DIR"]), torch.device("cpu"))
import comfy.sd, comfy.model_detection, nodes, comfy_extras.nodes_seedvr, comfy_extras.nodes_post_processing  # noqa
import importlib.metadata as md
versions = {n: md.version(n) for n in ("torch", "torchvision", "transformers", "numpy", "av", "kornia",
                                        "torchsde", "comfy-kitchen", "comfy-aimdo")}
print(f"device_run: native imports resolve ({time.perf_counter() - t0:.1f} s): {versions}")
EOF
else
    echo "device_run: no kit at $KIT (python bench/device_kit.py here, then carry .devkit): e2e-native will SKIP"
fi

if [ "${1:-}" = "--native-smoke" ]; then
    shift
    "$PY" bench/e2e_native.py --comfyui "${SEEDVR2_COMFYUI_DIR:?no kit: --native-smoke needs .devkit}" \
        --case small --budgets resident --json "$OUT/native_small.json" "$@"
    status=$?
else
    "$PY" bench/gpu_check.py --json "$OUT/gpu.json" "$@"
    status=$?
fi
echo "device_run: exit $status at $(date -u +%FT%TZ)"
exit $status
