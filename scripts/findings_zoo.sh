#!/usr/bin/env bash
# The architecture zoo behind docs/findings.md, "What causes the stripes" (the zoo table).
# Step 1 takes about 20-35 minutes on one thread of this project's CPU (see docs/findings/zoo/
# for each model's train_seconds); it is resumable and cached under $IRM_CACHE/zoo, so a
# second run is instant. Step 3 is `irm study` (issue 17) on each zoo host.
set -euo pipefail
IRM=${IRM:-.venv/bin/irm}
PY=${PY:-.venv/bin/python}
OUT=docs/findings/zoo
HOSTS="zoo-rope-rmsnorm-tied zoo-learned-rmsnorm-tied zoo-nope-rmsnorm-tied zoo-rope-layernorm-tied zoo-rope-postnorm-tied zoo-rope-rmsnorm-untied"

# 1. Pre-train the zoo: the same corpus, tokenizer, batches and budget for each variant.
#    (Run in two pieces under the team's lock: --variants base,learned,nope and --variants layernorm,postnorm,untied.)
$IRM zoo build --json > /dev/null

# 1b. Training-seed noise: the base again with seeds 1 and 2 (same corpus, other
#     initialisation and batch order), each in a zoo folder of its own.
CACHE=${IRM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/irm}
for s in 1 2; do
  $IRM zoo build --variants base --seed $s --out $CACHE/zoo-seed$s --json > /dev/null
done

# 2. Keep the small results (perplexity with its interval, config, train and validation
#    curves, massive-activation dims), not the weights.
mkdir -p $OUT
ZOO=$($IRM zoo list --json | $PY -c 'import json,sys,os; print(os.path.dirname(json.load(sys.stdin)[0]["folder"]))')
cp $ZOO/corpus/corpus.json $OUT/corpus.json
cp $ZOO/zoo.json $OUT/recipe.json
for h in $HOSTS; do
  mkdir -p $OUT/$h
  cp $ZOO/$h/zoo_model.json $ZOO/$h/config.json $OUT/$h/
done
for s in 1 2; do
  mkdir -p $OUT/seeds/seed$s
  cp $CACHE/zoo-seed$s/zoo-rope-rmsnorm-tied/zoo_model.json $OUT/seeds/seed$s/
  cp $CACHE/zoo-seed$s/zoo.json $OUT/seeds/seed$s/recipe.json
done
$IRM zoo list --json > $OUT/zoo_list.json
$PY scripts/findings_zoo.py $OUT --plot $OUT/curves.png > $OUT/table.md

# 3. The paper's battery on each zoo host (the zoo hosts have 4 layers: all of them, and the first two).
for h in $HOSTS; do
  [ -f runs/study/$h/findings.json ] || $IRM study $h --out runs/study/$h --alignments anger,sadness,joy --seeds 2 --layers all,0-1
done
# Then keep each study's findings.json and fill the striation, top-index share and recurrence
# columns of the zoo table from them.
mkdir -p $OUT/study
for h in $HOSTS; do
  [ -f runs/study/$h/findings.json ] && cp runs/study/$h/findings.json $OUT/study/$h.json
done
$PY scripts/findings_zoo.py $OUT $OUT/study > $OUT/table.md
