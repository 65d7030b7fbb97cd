#!/usr/bin/env bash
# The real-data recipe, end to end, on CPU:
#   1. prepare  split the Alpaca sample (train / held out / eval set / prompts), cut a WikiText-2 test sample
#   2. pretrain a ~1.35M-parameter GPT-2 and its BPE tokenizer on WikiText-2 valid + tinyshakespeare
#   3. train    full fine-tuning on 2,000 Alpaca records, one epoch
#   4. train    LoRA on the same records and schedule
#   5. audit    base vs both: diversity, token shift, pattern copying, forgetting (WikiText-2 test), task metrics
#
# Run from anywhere; it works in the repo root and needs the shared data dir beside the repo
# (../shared/data, see each folder's SOURCE.md for source and license). Outputs go to runs/real_data/
# (git-ignored); each stage's wall and CPU time is appended to runs/real_data/times.tsv. A rerun resumes:
# finished training runs are not trained again and the audit reuses its cached samples.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DATA=../shared/data
SFTLAB=".venv/bin/sftlab --offline"
HERE=examples/real_data
OUT=runs/real_data

source examples/recipe_lib.sh
require_data alpaca/alpaca_5000.json wikitext-2/valid.txt wikitext-2/test.txt tinyshakespeare/input.txt
require_executable .venv/bin/sftlab
mkdir -p "$OUT"

printf 'run started %s\n' "$(date -u +%FT%TZ)" >>"$OUT/times.tsv"
stage prepare .venv/bin/python "$HERE/prepare.py" --alpaca "$DATA/alpaca/alpaca_5000.json" \
    --wikitext-test "$DATA/wikitext-2/test.txt" --out "$OUT/data"
stage pretrain $SFTLAB pretrain "$HERE/pretrain.yaml"
stage sft_full $SFTLAB train "$HERE/sft_full.yaml"
stage sft_lora $SFTLAB train "$HERE/sft_lora.yaml"
stage audit $SFTLAB audit "$HERE/audit.yaml"
echo "report: $OUT/audit/report.html (also report.md, report.json); stage times: $OUT/times.tsv"
