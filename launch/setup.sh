#!/usr/bin/env bash
# Installs everything samout needs on a fresh Debian 12 machine, and nothing twice.
#   - Debian packages: compilers, CMake, Open MPI, HDF5, gflags, glog, GoogleTest, SentencePiece,
#     the fortune packages that the sample corpus is made from, and clang-format (the layout check).
#   - A Python virtual environment (default: <repo>/.venv, ignored by git; override with
#     SAMOUT_VENV) holding the pinned torch, whose LibTorch the C++ build links against.
# Re-running it when everything is present takes about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SAMOUT_VENV:-$ROOT/.venv}"
# torch 2.11.0 on PyPI is built against CUDA 13.0, the nvcc of our machines (see README).
TORCH_VERSION="2.11.0"
PY_PACKAGES=("torch==${TORCH_VERSION}" "numpy" "h5py" "matplotlib" "sentencepiece")

APT_PACKAGES=(build-essential cmake pkg-config python3 python3-venv
  openmpi-bin libopenmpi-dev libhdf5-dev hdf5-tools
  libgflags-dev libgoogle-glog-dev libgtest-dev
  libsentencepiece-dev sentencepiece libxxhash-dev nlohmann-json3-dev
  fortunes fortunes-zh
  slurm-wlm munge libpmix-dev
  clang-format)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Prefer a python3 that has venv support; pyenv's interpreter if present, else Debian's.
PYTHON="${SAMOUT_PYTHON_BOOTSTRAP:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.samout-packages"
want="${PY_PACKAGES[*]}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages into $VENV: $want"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
  have="$("$VENV/bin/python" -c 'import torch;print(torch.__version__.split("+")[0])')"
  if [ "$have" != "$TORCH_VERSION" ]; then
    echo "setup: error: torch $have installed, expected $TORCH_VERSION" >&2
    exit 2
  fi
  echo "$want" > "$stamp"
fi
