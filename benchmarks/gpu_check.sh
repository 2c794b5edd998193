#!/usr/bin/env bash
# One command for the day a GPU machine is lent for a few minutes (benchmarks/README.md, "GPU check").
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--cpu-smoke] [--keep] [--work-dir DIR]
#       Runs benchmarks/gpu_check.py: one PASS/FAIL/SKIP line per check, then a table of numbers; exit 1 if any
#       check failed. Under 5 minutes on a GPU; --cpu-smoke (or no CUDA) runs the same checks small, on the CPU.
#       With --wheels DIR (or GPU_CHECK_WHEELS=DIR) it first installs DIR/*.whl with pip --no-deps into a
#       temporary folder put on PYTHONPATH: for a GPU machine that has its own torch but no ultralytics and no
#       network. The repo root always goes first on PYTHONPATH, so this checkout's autoannotate is what runs.
#
#   bash benchmarks/gpu_check.sh --prepare-wheels DIR [--all]
#       Run HERE, where the package registry is reachable: downloads into DIR the wheels (no dependencies
#       resolved: the list below is explicit) for the GPU machine's Python, and prints their sizes.
#
# Environment: GPU_CHECK_PYTHON (default python3, else python) runs everything; GPU_CHECK_PYTHON_VERSION (default
# 3.12, python3 of the lent H100/H200 image) is the Python the wheels are fetched for.
#
# On the lent machine (the device tool): here `echo /.whl/ >> .git/info/exclude && bash benchmarks/gpu_check.sh
# --prepare-wheels .whl`, then a run with carry [".whl"] and the command `bash benchmarks/gpu_check.sh --wheels .whl`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# ---------------------------------------------------------------------------------------------------------------------
# What autoannotate needs beyond torch, torchvision and numpy (pyproject.toml's [project] dependencies, and what
# those import on the paths this check takes), as explicit lists: pip downloads each with --no-deps.
#
# Missing on the lent GPU image (its package list is in the device tool's notes), always fetched (~3 MB):
missing_on_gpu_image=(
  ultralytics      # pyproject: the YOLO detector and the SAM architectures (MobileSAM) autoannotate builds on
  ultralytics-thop # ultralytics' dependency, for its model summaries
  clip-anytorch    # pyproject: YOLOE/YOLO-World text prompts (module clip); no path of this check imports it
  ftfy             # clip-anytorch's dependency (its tokeniser)
  wcwidth          # ftfy's dependency
)
# On the lent GPU image already; fetched only with --all, for a machine without them. Together ~70 MB, over the
# 64 MiB that travels with a device call (which this repo's tracked files already take half of):
# opencv-python-headless alone is 61 MiB.
on_gpu_image=(
  opencv-python-headless # pyproject's opencv-python: the same cv2 module without the GUI libraries a server lacks
  pillow pyyaml tqdm typer rich                                                    # pyproject
  click shellingham annotated-doc pydantic pydantic-core annotated-types typing-inspection # typer's dependencies
  markdown-it-py mdurl pygments                                                    # rich's dependencies
  regex                                                                            # clip-anytorch's dependency
  nvidia-ml-py                                                                     # ultralytics imports pynvml
)
# Never fetched:
#   torch, torchvision, numpy: the GPU machine's own CUDA build (and far over the carry limit).
#   openvino (pyproject, x86-64 only): --runtime openvino on the CPU; a GPU run never imports it; ~40 MB.
#   ultralytics' matplotlib, scipy, polars, requests, psutil and ultralytics-platform: no path of this check
#   imports them (ultralytics imports them lazily, for training, plots and exports).
# ---------------------------------------------------------------------------------------------------------------------

#: the Python modules the check imports, by import name (a preflight names what is missing)
needed_modules=(torch numpy cv2 yaml PIL typer rich tqdm ultralytics)

usage() {
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

pick_python() {
  if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    echo "$GPU_CHECK_PYTHON"
  elif command -v python3 >/dev/null 2>&1; then
    echo python3
  else
    echo python
  fi
}

# NAME -> NAME==VERSION when this environment has it installed (opencv-python's version for the headless
# build), so the GPU machine runs what was tested here; else NAME (the newest the registry has).
pinned_specs() {
  "$python" - "$@" <<'PY'
import importlib.metadata as md
import sys

for name in sys.argv[1:]:
    for dist in [name, "opencv-python"] if name == "opencv-python-headless" else [name]:
        try:
            print(f"{name}=={md.version(dist)}")
            break
        except md.PackageNotFoundError:
            pass
    else:
        print(name)
PY
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

prepare_wheels() {
  local dir="$1" all="$2" version="${GPU_CHECK_PYTHON_VERSION:-3.12}"
  local names=("${missing_on_gpu_image[@]}")
  if [[ "$all" == 1 ]]; then
    names+=("${on_gpu_image[@]}")
  fi
  mkdir -p "$dir"
  local specs
  mapfile -t specs < <(pinned_specs "${names[@]}")
  echo "gpu_check: fetching ${#specs[@]} wheels for CPython $version (x86-64 Linux) into $dir: ${specs[*]}"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
    --implementation cp --abi "cp${version//./}" --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dir" "${specs[@]}"
  local total=0 size wheel
  for wheel in "$dir"/*.whl; do
    size=$(stat -c %s "$wheel")
    total=$((total + size))
    printf '  %10s  %s\n' "$(mib "$size")" "$(basename "$wheel")"
  done
  echo "gpu_check: wheels in $dir: $(mib "$total") in all"
  if command -v git >/dev/null 2>&1 && git -C "$repo_root" rev-parse >/dev/null 2>&1; then
    local tracked
    tracked=$(git -C "$repo_root" ls-files -z | (cd "$repo_root" && xargs -0 stat -c %s 2>/dev/null) |
      awk '{ s += $1 } END { print s + 0 }')
    echo "gpu_check: with this repo's tracked files ($(mib "$tracked")): $(mib $((total + tracked))) of the 64 MiB a device call carries"
  fi
}

python="$(pick_python)"
wheels="${GPU_CHECK_WHEELS:-}"
prepare=""
all=0
passed=()
while (($#)); do
  case "$1" in
    --wheels) wheels="${2:?--wheels needs a directory}"; shift 2 ;;
    --wheels=*) wheels="${1#*=}"; shift ;;
    --prepare-wheels) prepare="${2:?--prepare-wheels needs a directory}"; shift 2 ;;
    --prepare-wheels=*) prepare="${1#*=}"; shift ;;
    --all) all=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) passed+=("$1"); shift ;;
  esac
done

if [[ -n "$prepare" ]]; then
  prepare_wheels "$prepare" "$all"
  exit 0
fi
if [[ "$all" == 1 ]]; then
  echo "gpu_check: --all goes with --prepare-wheels DIR" >&2
  exit 2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_env.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
site=""
if [[ -n "$wheels" ]]; then
  shopt -s nullglob
  found=("$wheels"/*.whl)
  shopt -u nullglob
  if ((${#found[@]} == 0)); then
    echo "gpu_check: no .whl files in $wheels (make them with --prepare-wheels DIR where the registry is reachable)" >&2
    exit 2
  fi
  site="$tmp/site"
  echo "gpu_check: installing ${#found[@]} wheels from $wheels into $site" >&2
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$site" "${found[@]}" >&2
fi
export PYTHONPATH="$repo_root${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# no network there: ultralytics skips its online checks; its settings file goes to the temporary folder
export YOLO_OFFLINE="${YOLO_OFFLINE:-1}"
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$tmp/ultralytics}"

if ! missing="$("$python" - "${needed_modules[@]}" <<'PY'
import importlib.util
import sys

missing = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is None]
print(" ".join(missing))
sys.exit(1 if missing else 0)
PY
)"; then
  echo "gpu_check: $python lacks these modules: $missing; pass --wheels DIR made by --prepare-wheels DIR (add --all" \
    "for more than the lent GPU image lacks)" >&2
  exit 2
fi

cd "$repo_root"
"$python" benchmarks/gpu_check.py ${passed[@]+"${passed[@]}"}
