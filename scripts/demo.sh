#!/usr/bin/env bash
# The end-to-end demo on data the repository ships: every pipeline, the three stage mixtures, the tiny model trained
# through stages 1 -> 2 -> 3 on the CPU with evaluation after each, and one report folder. Output: out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
rm -rf out/demo
vlcorpus run --config e2e.yaml "$@"
