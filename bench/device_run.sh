#!/usr/bin/env bash
# The one command a GPU device session runs, from the repo root, with `.devkit` carried
# (built here by `python bench/device_kit.py`; see README, "GPU checks on a bare device machine"):
#
#   bash bench/device_run.sh                      # every check of bench/gpu_check.py (~11 min on an H200)
#   bash bench/device_run.sh --only e2e e2e-native   # any gpu_check.py options pass through
#   bash bench/device_run.sh --collect            # the next call, if the last one ran out of time
#   bash bench/device_run.sh --native-smoke       # instead: bench/e2e_native.py on the `small` case
#
# It unpacks the kit into $SEEDVR2_DEVKIT_WORK (/tmp/seedvr2-devkit): the wheels installed with
# `pip install --no-index --no-deps --target site`, ComfyUI 0.33.0's source as comfyui/; exports
# PYTHONPATH, SEEDVR2_COMFYUI_DIR, SEEDVR2_COMFYUI_PYTHON and PYTHONUNBUFFERED=1; checks that the
# native run's imports resolve (logged; a failure there shows up as check e2e-native's FAIL).
# gpu_check.py runs in its own session (setsid), so that it survives the end of a device call
# (one call may run 10 minutes, the whole set takes longer): this script follows its output for up
# to $SEEDVR2_DEVICE_WAIT seconds (default 560 in all), then copies gpu_check.log and gpu.json into
# $OUT (./device-out when unset) and exits with gpu_check's status, or 3 if it is still running:
# then call `bash bench/device_run.sh --collect` at once (a device machine stays warm 30 s), which
# waits for it again and copies the results. Its own log: $OUT/device_run.log. Without the kit it
# still runs gpu_check, whose e2e-native check then SKIPs with the reason.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/device-out}
KIT=${SEEDVR2_DEVKIT:-$PWD/.devkit}
WORK=${SEEDVR2_DEVKIT_WORK:-/tmp/seedvr2-devkit}
case $WORK in  # it is wiped: an absolute folder at least two levels down
    /*/?*) ;;
    *) echo "device_run: SEEDVR2_DEVKIT_WORK=$WORK: want an absolute folder below /x/ (it is wiped)" >&2; exit 2;;
esac
PY=$(command -v "${PYTHON:-python3}") || { echo "device_run: no ${PYTHON:-python3}" >&2; exit 2; }
mkdir -p "$OUT" || exit 2
export PYTHONUNBUFFERED=1

# Follow the detached gpu_check (pid in $RUN/pid) until it ends or the wait runs out; copy its results.
collect() {
    local pid deadline=$(( ${SEEDVR2_DEVICE_WAIT:-560} ))
    pid=$(cat "$RUN/pid" 2>/dev/null) || { echo "device_run: no gpu_check started in $RUN" >&2; exit 2; }
    tail -n +1 -F --pid="$pid" "$RUN/gpu_check.log" 2>/dev/null &
    local follower=$!
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 2; done
    kill "$follower" 2>/dev/null; wait "$follower" 2>/dev/null
    cp -f "$RUN/gpu_check.log" "$OUT/" 2>/dev/null; cp -f "$RUN/gpu.json" "$OUT/" 2>/dev/null
    if [ -f "$RUN/rc" ]; then
        status=$(cat "$RUN/rc")
        echo "device_run: gpu_check exit $status at $(date -u +%FT%TZ)"
        exit "$status"
    fi
    echo "device_run: gpu_check (pid $pid) is still running after ${SECONDS}s:" \
        "call \`bash bench/device_run.sh --collect\` now"
    exit 3
}
RUN=$WORK/run

main() {
if [ "${1:-}" = "--collect" ]; then
    echo "device_run --collect: $(date -u +%FT%TZ)"
    collect
fi

echo "device_run: $(date -u +%FT%TZ) $(uname -m) $("$PY" -V 2>&1) at $PY; OUT=$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [ -f "$KIT/wheels.tar.xz" ] && [ -f "$KIT/comfyui-0.33.0.tar.xz" ]; then
    rm -rf "$WORK" && mkdir -p "$WORK/site" || exit 2
    t0=$SECONDS
    "$PY" -c 'import sys, tarfile
for archive in sys.argv[2:]:
    with tarfile.open(archive) as tar:  # Python, not tar -J: no xz binary needed; "data": no links out, no ..
        tar.extractall(sys.argv[1], filter="data")' "$WORK" "$KIT/wheels.tar.xz" "$KIT/comfyui-0.33.0.tar.xz" \
        || { echo "device_run: unpacking the kit failed" >&2; exit 2; }
    if [ -n "${SEEDVR2_DEVKIT_SITE:-}" ]; then  # a local stand-in: the same packages for another Python
        SITE=$SEEDVR2_DEVKIT_SITE
    else
        SITE=$WORK/site
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
            "$WORK"/wheels/*.whl || { echo "device_run: installing the kit's wheels failed" >&2; exit 2; }
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
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
    echo "device_run: exit $status at $(date -u +%FT%TZ)"
    exit $status
fi

mkdir -p "$RUN" && rm -f "$RUN"/{pid,rc,gpu.json,gpu_check.log} || exit 2
setsid bash -c '"$@"; echo $? > "'"$RUN"'/rc"' gpu_check "$PY" bench/gpu_check.py --json "$RUN/gpu.json" "$@" \
    > "$RUN/gpu_check.log" 2>&1 < /dev/null &
echo $! > "$RUN/pid"
echo "device_run: gpu_check started (pid $(cat "$RUN/pid")): $PY bench/gpu_check.py $*"
collect
}

main "$@" 2>&1 | tee "$OUT/device_run.log"
exit "${PIPESTATUS[0]}"
