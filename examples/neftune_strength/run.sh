#!/usr/bin/env bash
# NEFTune strength on SmolLM2-135M-Instruct, end to end, on CPU:
#   1. prepare  split the Alpaca sample: 160 training records, 100 held out (eval loss), of which 32 are the
#               eval set (ROUGE-L, BLEU) and 24 others the audit prompts (diversity, answer length, style)
#   2. sweep    alpha 0 / 5 / 10 / 15 x seeds 0, 1, 2: full fine-tuning, each run audited against the base
#   3. table    runs/neftune_strength/seed_table.md: mean and 95% t-interval over seeds per alpha
#
# Arguments go to examples/seed_sweep.py: sweep overrides and --strategies. A smaller run, into its own dir:
#   examples/neftune_strength/run.sh --strategies alpha0,alpha10 seeds=[0] train.max_steps=30 \
#       out=runs/neftune_strength_smoke
# (with out= set, the data still goes to runs/neftune_strength/data.) A rerun resumes: finished runs are
# skipped, an interrupted one continues from its last checkpoint. Stage times: runs/neftune_strength/times.tsv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DATA=../shared/data
PY=${PY:-.venv/bin/python}  # PY=/path/to/python to use another environment
HERE=examples/neftune_strength
OUT=runs/neftune_strength

source examples/recipe_lib.sh
require_data alpaca/alpaca_5000.json wikitext-2/test.txt
require_executable $PY
mkdir -p "$OUT"

printf 'run started %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$OUT/times.tsv"
stage prepare $PY examples/real_data/prepare.py --alpaca "$DATA/alpaca/alpaca_5000.json" \
    --wikitext-test "$DATA/wikitext-2/test.txt" --train 160 --heldout 100 --eval-set 32 --prompts 24 \
    --out "$OUT/data"
stage sweep $PY examples/seed_sweep.py "$HERE/sweep.yaml" "$@"
