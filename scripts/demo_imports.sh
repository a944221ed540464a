#!/usr/bin/env bash
# Import every demo dataset under demo/ and build the SFT shards from the demo conversations (plus, when the corpus
# already holds doc_ocr / web_code shards, the derived tasks). Usage: scripts/demo_imports.sh [CORPUS] [NUM_CPUS]
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS="${1:-demo-out/corpus}"
CPUS="${2:-2}"
for kind in caption interleaved table_chart scene_ocr; do
    python3 -m vlcorpus import "$kind" "demo/$kind" --out "$CORPUS" --num-cpus "$CPUS"
done
python3 -m vlcorpus import text demo/text/records --out "$CORPUS" --num-cpus "$CPUS"
python3 -m vlcorpus build sft demo/sft --out "$CORPUS" --corpus "$CORPUS" --num-cpus "$CPUS"
