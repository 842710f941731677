#!/usr/bin/env bash
# hifi123 installer. Idempotent; never downloads model weights.
#
#   bash install.sh                  GPU users: threestudio (THREESTUDIO_ROOT or a pinned clone in
#                                    ./threestudio) + its requirements with working pins + hifi123,
#                                    linked into <threestudio>/custom/hifi123. Stops before installing
#                                    anything when torch sees no CUDA GPU (--force installs anyway).
#   bash install.sh --test           CPU test env (.venv) on threestudio's own tested stack: torch 2.0.1,
#                                    torchvision 0.15.2, numpy<2, diffusers 0.19.3, transformers 4.28.1,
#                                    pytorch-lightning 2.0; runs the tests.
#   bash install.sh --test --latest  the same on current releases (.venv-latest: torch 2.14.1).
#   Both also get threestudio's CPU-importable dependencies, so the threestudio-marked tests run as
#   soon as THREESTUDIO_ROOT points at a checkout.
#
# Extra arguments after `--` go to pytest, e.g. `bash install.sh --test -- -k rgnv`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

THREESTUDIO_URL="https://github.com/threestudio-project/threestudio.git"
THREESTUDIO_COMMIT="28d9d80d9d00f308244adfcf3be8b17ca0cb6465"   # threestudio 0.2.3 (2024-12-16)
PYTHON="${PYTHON:-python3}"

# threestudio's tested stack: its Dockerfile's torch 2.0.1 (+ torchvision 0.15.2, built against
# numpy 1.x), its pins diffusers<0.20 and transformers 4.28.1; diffusers 0.19.3 needs
# huggingface_hub<0.26; pytorch_lightning 2.0.x needs setuptools<81 for pkg_resources
COMPAT_TORCH=(torch==2.0.1 torchvision==0.15.2)
COMPAT_PINS=(
  "numpy<2" diffusers==0.19.3 transformers==4.28.1 huggingface_hub==0.25.2 tokenizers==0.13.3
  pytorch-lightning==2.0.0 "setuptools<81" omegaconf==2.3.0 "accelerate<1.0"
  "opencv-python-headless<4.11"
)
# current releases, tested on 2026-12-02
LATEST_TORCH=(torch==2.14.1 torchvision==0.29.1)
LATEST_PINS=(
  numpy diffusers==0.42.1 transformers==5.23.0 huggingface_hub==2.4.0
  pytorch-lightning==2.6.6 omegaconf==2.4.0 accelerate opencv-python-headless
)
COMMON_PINS=(
  pillow safetensors tqdm scipy imageio imageio-ffmpeg trimesh
  lpips==0.1.4 open_clip_torch==3.3.0 timm==1.0.31 torchmetrics
  pytest ruff selenium
  submitit==1.5.4   # hifi123 run --backend slurm (the `slurm` extra); its tests start a real Slurm
)
# what threestudio imports at module level on CPU, and what launch.py / its exporter need (the six
# GPU-only modules are stubbed by our test support instead): the threestudio-marked tests run as
# soon as THREESTUDIO_ROOT points at a checkout
THREESTUDIO_CPU_PINS=(jaxtyping "typeguard==2.13.3" matplotlib ipython einops wandb kornia
  networkx tensorboard xatlas)

say()  { printf '\033[1;34m[hifi123]\033[0m %s\n' "$*"; }
die()  { printf '\033[1;31m[hifi123] error:\033[0m %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
# a command-line mistake: what was wrong, what was expected, the fix; exit code 2 (as `hifi123`)
usage_error() {
  printf '\033[1;31m[hifi123] error:\033[0m %s\n  expected: %s\n  fix: %s\n' "$1" "$2" "$3" >&2
  exit 2
}

MODE=gpu
STACK=compat
FORCE=0
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test) MODE=test ;;
    --latest) STACK=latest ;;
    --force) FORCE=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    *) usage; usage_error "unknown argument '$1'" \
         "--test, --latest, --force, -h/--help, or -- PYTEST_ARGS" \
         "bash install.sh --help (arguments for pytest go after --)" ;;
  esac
  shift
done
[ "$STACK" = latest ] && [ "$MODE" != test ] && usage_error "--latest without --test" \
  "--latest only together with --test (GPU installs use threestudio's pinned stack)" \
  "bash install.sh --test --latest"

pip_q() { "$@" --disable-pip-version-check --progress-bar off -q; }

# ------------------------------------------------------------------------------------------------
test_mode() {
  local venv pins stamp want
  local -a TORCH_PINS
  if [ "$STACK" = latest ]; then venv="$HERE/.venv-latest"; pins=("${LATEST_PINS[@]}"); TORCH_PINS=("${LATEST_TORCH[@]}")
  else venv="$HERE/.venv"; pins=("${COMPAT_PINS[@]}"); TORCH_PINS=("${COMPAT_TORCH[@]}"); fi
  command -v "$PYTHON" >/dev/null || die "PYTHON='$PYTHON' not found
  expected: a Python 3.9-3.11 interpreter
  fix: install Python 3.9-3.11 or set PYTHON=/path/to/python3"
  [ -x "$venv/bin/python" ] || { say "creating $venv"; "$PYTHON" -m venv "$venv"; }
  local py="$venv/bin/python"

  # torch first, alone: an unpinned torch requirement elsewhere would pull another multi-GB build
  want="${TORCH_PINS[*]} | ${pins[*]} | ${COMMON_PINS[*]} | ${THREESTUDIO_CPU_PINS[*]}"
  stamp="$venv/.hifi123-stack"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    if [ "$STACK" = compat ]; then
      say "installing ${TORCH_PINS[*]} first, alone (torch 2.0.1 is ~2.5 GB from the registry the first time)"
    else
      say "installing ${TORCH_PINS[*]} first, alone"
    fi
    pip_q "$py" -m pip install "${TORCH_PINS[@]}" \
      || die "step 'torch' failed: pip could not install ${TORCH_PINS[*]}; check that the registry is reachable, then re-run"
    say "installing the $STACK stack: ${pins[*]} + threestudio's CPU dependencies"
    pip_q "$py" -m pip install "${TORCH_PINS[@]}" "${pins[@]}" "${COMMON_PINS[@]}" "${THREESTUDIO_CPU_PINS[@]}" \
      || die "step 'stack' failed: pip could not install the $STACK pins (its message is above); re-run after fixing it"
    echo "$want" > "$stamp"
  else
    say "$STACK stack already installed in $venv"
  fi
  pip_q "$py" -m pip install --no-deps --no-build-isolation -e "$HERE"
  "$py" - "$STACK" "${TORCH_PINS[@]}" <<'EOF'
import sys, importlib.metadata as md
stack, pins = sys.argv[1], sys.argv[2:]
for pin in pins:
    name, ver = pin.split("==")
    got = md.version(name)
    if got.split("+")[0] != ver:
        sys.exit(f"[hifi123] error: {name} is {got}, expected {ver}: another package replaced it")
if stack == "compat" and int(md.version("numpy").split(".")[0]) >= 2:
    sys.exit(f"[hifi123] error: numpy {md.version('numpy')} beside torch 2.0.1, which needs numpy<2")
import diffusers, transformers
print(f"[hifi123] torch {md.version('torch')}, numpy {md.version('numpy')}, diffusers {diffusers.__version__}, "
      f"transformers {transformers.__version__}, pytorch-lightning {md.version('pytorch-lightning')}")
EOF

  if [ -n "${THREESTUDIO_ROOT:-}" ] && [ ! -d "$THREESTUDIO_ROOT/threestudio" ]; then
    die "THREESTUDIO_ROOT=$THREESTUDIO_ROOT has no threestudio/ package; point it at a threestudio checkout"
  fi

  local args=(-q)
  if [ "$STACK" = latest ] && [ "${HIFI123_LATEST_FULL:-0}" != 1 ]; then
    args+=(-m "not slow")   # the --latest run is the smoke subset unless HIFI123_LATEST_FULL=1
  fi
  say "running tests ($STACK stack): pytest ${args[*]} ${PYTEST_ARGS[*]:-}"
  cd "$HERE"
  set +e
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    "$py" -m pytest "${args[@]}" "${PYTEST_ARGS[@]}"
  local rc=$?
  set -e
  [ $rc -eq 0 ] && say "tests passed ($STACK stack)" || say "tests FAILED ($STACK stack), exit code $rc"
  return $rc
}

# ------------------------------------------------------------------------------------------------
gpu_mode() {
  local root="${THREESTUDIO_ROOT:-$HERE/threestudio}"
  command -v "$PYTHON" >/dev/null || die "PYTHON='$PYTHON' not found
  expected: the Python interpreter that has your CUDA build of torch
  fix: set PYTHON=/path/to/python3, or bash install.sh --test for the CPU test environment"
  "$PYTHON" -c "import torch" 2>/dev/null || die "torch is not installed in '$PYTHON'
  expected: a CUDA build of torch and torchvision (threestudio is tested with torch 2.0.1+cu118)
  fix: install them into that Python first, then re-run: bash install.sh"
  if ! "$PYTHON" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    local tv; tv="$("$PYTHON" -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda)" 2>/dev/null)"
    if [ "$FORCE" != 1 ]; then
      die "step 'check GPU' failed: torch ($tv) sees no CUDA GPU, and threestudio's requirements (tiny-cuda-nn, nvdiffrast) build only with CUDA. Nothing was installed.
  On a GPU machine: install a CUDA build of torch first (threestudio uses torch 2.0.1 + torchvision 0.15.2 for CUDA 11.8, as its README shows), then re-run bash install.sh
  On this CPU machine: bash install.sh --test (tests, tiny models, smoke runs of launch.py)
  To install anyway: bash install.sh --force"
    fi
    say "warning: torch ($tv) sees no CUDA GPU; installing anyway (--force)"
  fi

  if [ -d "$root/threestudio" ]; then
    say "using threestudio at $root"
  elif [ -n "${THREESTUDIO_ROOT:-}" ]; then
    die "THREESTUDIO_ROOT=$THREESTUDIO_ROOT is not a threestudio checkout (no threestudio/ package inside)"
  else
    command -v git >/dev/null || die "git not found; install git or set THREESTUDIO_ROOT to an existing checkout"
    say "cloning threestudio @ ${THREESTUDIO_COMMIT:0:7} into $root"
    git clone --quiet "$THREESTUDIO_URL" "$root"
    git -C "$root" checkout --quiet "$THREESTUDIO_COMMIT"
  fi

  local cons; cons="$(mktemp)"; trap 'rm -f "$cons"' RETURN
  # pins that really work together with threestudio's requirements.txt (see README, troubleshooting)
  printf '%s\n' "huggingface_hub<0.26" "pytorch-lightning>=2.0,<2.1" "setuptools<81" \
    "lightning-cloud<0.6" "websockets<12" "typeguard==2.13.3" "diffusers<0.20" "transformers==4.28.1" > "$cons"
  say "installing threestudio's requirements with working pins (needs CUDA toolchain for tiny-cuda-nn/nvdiffrast)"
  "$PYTHON" -m pip install -r "$root/requirements.txt" -c "$cons" "pytorch-lightning>=2.0,<2.1" \
    || die "step 'threestudio requirements' failed (pip's message is above). tiny-cuda-nn and nvdiffrast compile against CUDA: check nvcc --version matches torch.version.cuda, then re-run bash install.sh"
  say "installing hifi123"
  "$PYTHON" -m pip install -c "$cons" -e "$HERE" || die "step 'hifi123' failed (pip's message is above); re-run bash install.sh"

  mkdir -p "$root/custom"
  local link="$root/custom/hifi123"
  if [ -L "$link" ] || [ ! -e "$link" ]; then
    ln -sfn "$HERE/custom/hifi123" "$link"
  elif [ "$(cd "$link" && pwd -P)" != "$(cd "$HERE/custom/hifi123" && pwd -P)" ]; then
    die "$link exists and is not our link; move it away and re-run"
  fi
  say "linked $link -> $HERE/custom/hifi123"
  cat <<EOF

Next (on a GPU, from the threestudio root):
  cd $root
  python launch.py --config custom/hifi123/configs/coarse.yaml --train --gpu 0
EOF
}

if [ "$MODE" = test ]; then test_mode; else gpu_mode; fi
