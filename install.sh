#!/usr/bin/env bash
# hifi123 installer. Idempotent; never downloads model weights.
#
#   bash install.sh                  GPU users: threestudio (THREESTUDIO_ROOT or a pinned clone in
#                                    ./threestudio) + its requirements with working pins + hifi123,
#                                    linked into <threestudio>/custom/hifi123.
#   bash install.sh --test           CPU test env (.venv): torch 2.14.1 + the threestudio-compatible
#                                    stack (diffusers 0.19.3, transformers 4.28.1); runs the tests.
#   bash install.sh --test --latest  the same on current diffusers/transformers (.venv-latest).
#
# Extra arguments after `--` go to pytest, e.g. `bash install.sh --test -- -k rgnv`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

THREESTUDIO_URL="https://github.com/threestudio-project/threestudio.git"
THREESTUDIO_COMMIT="28d9d80d9d00f308244adfcf3be8b17ca0cb6465"   # threestudio 0.2.3 (2024-12-16)
PYTHON="${PYTHON:-python3}"

TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# threestudio-compatible stack (threestudio pins diffusers<0.20 and transformers 4.28.1; diffusers
# 0.19.3 needs huggingface_hub<0.26; pytorch_lightning 2.0.x needs setuptools<81 for pkg_resources)
COMPAT_PINS=(
  diffusers==0.19.3 transformers==4.28.1 huggingface_hub==0.25.2 tokenizers==0.13.3
  pytorch-lightning==2.0.0 "setuptools<81" omegaconf==2.3.0
)
# current releases, tested on 2026-11-23
LATEST_PINS=(
  diffusers==0.42.1 transformers==5.23.0 huggingface_hub==2.4.0
  pytorch-lightning==2.6.6 omegaconf==2.4.0
)
COMMON_PINS=(
  numpy pillow safetensors tqdm scipy imageio imageio-ffmpeg trimesh accelerate
  lpips==0.1.4 open_clip_torch==3.3.0 timm==1.0.31 torchmetrics
  pytest ruff
)
# pip-installable deps that threestudio's modules import at module level on CPU (the six GPU-only
# ones are stubbed by our test fixture instead); only used when THREESTUDIO_ROOT is set for tests
THREESTUDIO_CPU_PINS=(jaxtyping "typeguard==2.13.3" opencv-python-headless matplotlib ipython
  einops wandb)

say()  { printf '\033[1;34m[hifi123]\033[0m %s\n' "$*"; }
die()  { printf '\033[1;31m[hifi123] error:\033[0m %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=gpu
STACK=compat
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --test) MODE=test ;;
    --latest) STACK=latest ;;
    -h|--help) usage; exit 0 ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    *) usage; die "unknown argument '$1'" ;;
  esac
  shift
done
[ "$STACK" = latest ] && [ "$MODE" != test ] && die "--latest only goes with --test (GPU installs use threestudio's pinned stack)"

pip_q() { "$@" --disable-pip-version-check --progress-bar off -q; }

# ------------------------------------------------------------------------------------------------
test_mode() {
  local venv pins stamp want
  if [ "$STACK" = latest ]; then venv="$HERE/.venv-latest"; pins=("${LATEST_PINS[@]}")
  else venv="$HERE/.venv"; pins=("${COMPAT_PINS[@]}"); fi
  command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found; install Python 3.9-3.11 or set PYTHON=/path/to/python3"
  [ -x "$venv/bin/python" ] || { say "creating $venv"; "$PYTHON" -m venv "$venv"; }
  local py="$venv/bin/python"

  # torch first, alone: an unpinned torch requirement elsewhere would pull another multi-GB build
  want="${TORCH_PINS[*]} | ${pins[*]} | ${COMMON_PINS[*]}"
  stamp="$venv/.hifi123-stack"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing ${TORCH_PINS[*]} (from this machine's wheel cache when present)"
    pip_q "$py" -m pip install "${TORCH_PINS[@]}"
    say "installing the $STACK stack: ${pins[*]}"
    pip_q "$py" -m pip install "${TORCH_PINS[@]}" "${pins[@]}" "${COMMON_PINS[@]}"
    echo "$want" > "$stamp"
  else
    say "$STACK stack already installed in $venv"
  fi
  pip_q "$py" -m pip install --no-deps --no-build-isolation -e "$HERE"
  "$py" - "${TORCH_PINS[@]}" <<'EOF'
import sys, importlib.metadata as md
for pin in sys.argv[1:]:
    name, ver = pin.split("==")
    got = md.version(name)
    if got.split("+")[0] != ver:
        sys.exit(f"[hifi123] error: {name} is {got}, expected {ver}: another package replaced it")
import diffusers, transformers
print(f"[hifi123] torch {md.version('torch')}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
EOF

  if [ -n "${THREESTUDIO_ROOT:-}" ]; then
    [ -d "$THREESTUDIO_ROOT/threestudio" ] || die "THREESTUDIO_ROOT=$THREESTUDIO_ROOT has no threestudio/ package; point it at a threestudio checkout"
    say "THREESTUDIO_ROOT set: installing threestudio's CPU-importable deps for the marked tests"
    pip_q "$py" -m pip install "${TORCH_PINS[@]}" "${THREESTUDIO_CPU_PINS[@]}"
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
  command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found"
  "$PYTHON" -c "import torch" 2>/dev/null || die "torch is not installed in '$PYTHON'. Install a CUDA build of torch and torchvision first (threestudio is tested with torch 2.0.1+cu118), then re-run: bash install.sh"
  if ! "$PYTHON" -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "warning: torch sees no CUDA GPU; threestudio training needs one (CPU users: bash install.sh --test)"
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
  "$PYTHON" -m pip install -r "$root/requirements.txt" -c "$cons" "pytorch-lightning>=2.0,<2.1"
  say "installing hifi123"
  "$PYTHON" -m pip install -c "$cons" -e "$HERE"

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
