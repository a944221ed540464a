#!/usr/bin/env bash
# Install everything vlcorpus needs, idempotently: Debian packages, PyTorch (CPU build on a machine without an
# NVIDIA GPU), the project itself, and Nougat's dataset tools. Both `make demo` and `make test` run this first.
# Without root: have an administrator install $APT_PACKAGES, then run with VLCORPUS_SKIP_APT=1.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="chromium latexml bubblewrap texlive-latex-base texlive-latex-recommended texlive-latex-extra texlive-science
  texlive-pictures texlive-publishers texlive-bibtex-extra texlive-pstricks texlive-luatex biber latexmk
  fonts-noto-cjk fonts-noto-core fonts-dejavu-core poppler-utils libcairo2
  tesseract-ocr tesseract-ocr-jpn tesseract-ocr-jpn-vert tesseract-ocr-chi-sim tesseract-ocr-chi-sim-vert"
PY=${PYTHON:-python3}

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

pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    pip_install "torch>=2.5"  # the default build carries CUDA
  else
    # CPU build: a local wheel if pip's find-links has one, else PyTorch's CPU index (no multi-GB CUDA download)
    pip_install "torch==2.13.0+cpu" 2>/dev/null || pip_install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

if ! "$PY" -c "import renderers.paper.nougat_tools" 2>/dev/null || [ pyproject.toml -nt .setup-done ]; then
  pip_install -e .
  # nougat-ocr pins its model stack (timm==0.5.4, lightning, datasets, albumentations, opencv), none of which the
  # dataset tools use; install it without them and load the tools through renderers.paper.nougat_tools.
  pip_install --no-deps "nougat-ocr==0.1.17"
  touch .setup-done
fi
