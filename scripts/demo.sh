#!/usr/bin/env bash
# The end-to-end demo on data the repository ships. Output goes to out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
OUT=out/demo
rm -rf "$OUT"
vlcorpus import text demo/text/records --out "$OUT/corpus" --set min_chars=100 --set max_chars=1200
vlcorpus inspect "$OUT/corpus" --verify --samples 2
echo
echo "demo done: corpus in $OUT/corpus (shards per category, _ledger/ per source)"
