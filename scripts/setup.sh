#!/usr/bin/env bash
# Install everything vlcorpus needs, idempotently: Debian packages, then a virtual environment in the repository
# (.venv, so a distribution's own python3 works: PEP 668 forbids pip installs into it) holding PyTorch (the CPU build
# on a machine without an NVIDIA GPU), the project with the extras named as arguments, and Nougat's dataset tools.
# Usage: scripts/setup.sh [EXTRA ...]   (extras of pyproject.toml: classifier, test). `make demo`/`make test` run it.
# PYTHON chooses the interpreter that creates .venv (default python3). A working .venv is kept; delete it to rebuild.
# Without root: have an administrator install $APT_PACKAGES, then run with VLCORPUS_SKIP_APT=1.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="python3-venv chromium latexml bubblewrap texlive-latex-base texlive-latex-recommended texlive-latex-extra texlive-science
  texlive-pictures texlive-publishers texlive-bibtex-extra texlive-pstricks texlive-luatex biber latexmk
  fonts-noto-cjk fonts-noto-core fonts-dejavu-core poppler-utils libcairo2
  tesseract-ocr tesseract-ocr-jpn tesseract-ocr-jpn-vert tesseract-ocr-chi-sim tesseract-ocr-chi-sim-vert"
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.vlcorpus-setup  # "<hash of pyproject.toml and this script> <extras installed>"

missing=$(for p in $APT_PACKAGES; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
if [ -n "$missing" ] && [ "${VLCORPUS_SKIP_APT:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup: missing Debian packages:" $missing >&2
    echo "setup: install them as root (apt-get install ...), then rerun with VLCORPUS_SKIP_APT=1" >&2
    exit 1
  fi
  echo "setup: apt-get install" $missing
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if ! "$VENV/bin/python" -c "" 2>/dev/null; then
  echo "setup: creating $VENV with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$PY" -m venv --clear "$VENV" || {
    echo "setup: '$PY -m venv' failed; on Debian/Ubuntu it needs the python3-venv package" >&2
    exit 1
  }
fi
VPY=$VENV/bin/python

hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
read -r have_hash have_extras 2>/dev/null < "$STAMP" || { have_hash=""; have_extras=""; }
extras=$(printf '%s\n' ${have_extras//,/ } "$@" | sort -u | paste -sd, -)
if [ "$hash" = "$have_hash" ] && [ "$extras" = "$have_extras" ]; then
  echo "setup: $VENV is up to date (extras: ${extras:-none})"
  exit 0
fi

pip_install() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }

if ! "$VPY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    pip_install "torch>=2.5"  # the default build carries CUDA
  else
    # CPU build: a local wheel if pip's find-links has one, else PyTorch's CPU index (no multi-GB CUDA download)
    pip_install "torch==2.13.0+cpu" 2>/dev/null || pip_install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
echo "setup: pip install -e .${extras:+[$extras]} into $VENV"
pip_install -e ".${extras:+[$extras]}"
# nougat-ocr pins its model stack (timm==0.5.4, lightning, datasets, albumentations, opencv), none of which the
# dataset tools use; install it without them and load the tools through renderers.paper.nougat_tools.
pip_install --no-deps "nougat-ocr==0.1.17"
echo "$hash $extras" > "$STAMP"
echo "setup: done; put vlcorpus on PATH with: . $VENV/bin/activate"
