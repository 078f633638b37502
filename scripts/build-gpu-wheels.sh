#!/usr/bin/env bash
# Build .whl/: the wheels scripts/gpu-check.sh installs on the GPU machine (Python 3.12, no network).
#
# Runs here, after `make venv`. scripts/gpu_wheels.py picks what imgcls and the check need that the
# machine lacks (never torch, torchvision, triton, nvidia-* or cuda-*), pinned to this venv's versions;
# this script downloads one cp312 manylinux x86_64 (or pure-Python) wheel of each into .whl/ and fails
# unless they fit the budget (56 MiB; a call carries 64 MiB with the repository).
#
#   bash scripts/build-gpu-wheels.sh [--kinds /work/.library/device/KINDS.md] [--budget-mib 56]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY="$ROOT/.venv/bin/python"
DEST="$ROOT/.whl"
SELECT_ARGS=()
BUDGET_MIB=56
while (($#)); do
    case "$1" in
        --kinds) SELECT_ARGS+=(--kinds "$2"); shift 2 ;;
        --budget-mib) BUDGET_MIB="$2"; shift 2 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -x "$PY" ]] || { echo "no $PY: run 'make venv' first" >&2; exit 1; }
git -C "$ROOT" check-ignore -q "$DEST/x.whl" || { echo ".whl/ is not ignored by .gitignore" >&2; exit 1; }

mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/*.txt
"$PY" "$ROOT/scripts/gpu_wheels.py" select "$DEST" "${SELECT_ARGS[@]}"

# The platforms the device notes name first; newer manylinux tags only for a package that has no wheel
# for those (the machine's Python is Ubuntu 24.04's 3.12.3, glibc 2.39).
BASE=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
NEWER=()
for n in $(seq 24 39); do NEWER+=("manylinux_2_${n}_x86_64"); done
download() {  # download PIN PLATFORM...
    local pin=$1 platforms=() p
    shift
    for p in "$@"; do platforms+=(--platform "$p"); done
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" --dest "$DEST" "$pin"
}
while read -r pin; do
    if ! download "$pin" "${BASE[@]}" 2>/dev/null; then
        echo "$pin: no wheel for ${BASE[0]} and older; trying manylinux_2_24 to 2_39" >&2
        download "$pin" "${BASE[@]}" "${NEWER[@]}"
    fi
done <"$DEST/carried.txt"

"$PY" "$ROOT/scripts/gpu_wheels.py" check "$DEST" --budget-mib "$BUDGET_MIB"
echo "ready: carry .whl with scripts/gpu-check.sh (docs/performance.md, 'Running the GPU check')"
