#!/usr/bin/env bash
# Data scaling, LoRA against full fine-tuning, on SmolLM2-135M-Instruct, end to end, on CPU:
#   1. prepare  split the Alpaca sample (120 held out: eval loss, eval set, prompts; the rest for training),
#               cut nested 1x / 4x / 16x training sets (30 / 120 / 480 records), 4 WikiText-2 test
#               articles and 200 PIQA items for forgetting
#   2. sweep    {lora, full} x {1x, 4x, 16x}, one epoch each, each run audited against the base
#   3. table    runs/data_scaling/seed_table.md: task scores and forgetting per run (intervals with > 1 seed)
#
# Arguments go to examples/seed_sweep.py: sweep overrides and --strategies, e.g. seeds=[0,1,2] for
# intervals, or a smaller run into its own dir:
#   examples/data_scaling/run.sh --strategies lora_1x,full_1x train.max_steps=20 out=runs/data_scaling_smoke
# A rerun resumes: finished runs are skipped, an interrupted one continues from its last checkpoint.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DATA=../shared/data
PY=${PY:-.venv/bin/python}  # PY=/path/to/python to use another environment
HERE=examples/data_scaling
OUT=runs/data_scaling

source examples/recipe_lib.sh
require_data alpaca/alpaca_5000.json wikitext-2/test.txt piqa/dev.jsonl
require_executable $PY
mkdir -p "$OUT"

printf 'run started %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$OUT/times.tsv"
stage prepare $PY examples/real_data/prepare.py --alpaca "$DATA/alpaca/alpaca_5000.json" \
    --wikitext-test "$DATA/wikitext-2/test.txt" --train 0 --heldout 120 --eval-set 32 --prompts 16 \
    --wikitext-articles 4 --out "$OUT/data"
stage scale $PY "$HERE/prepare.py" --data "$OUT/data" --piqa-file "$DATA/piqa/dev.jsonl" --base 30 --piqa 200
stage sweep $PY examples/seed_sweep.py "$HERE/sweep.yaml" "$@"
