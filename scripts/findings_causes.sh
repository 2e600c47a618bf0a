#!/usr/bin/env bash
# Every command behind docs/findings.md section 5, "What causes the stripes" (issue 18), in
# order. Each step skips what is already done, so the script resumes where it stopped.
# Run one step with `scripts/findings_causes.sh STEP` (lr, adam, sgd, edits, analyze,
# tables; adam-anger and adam-joy are the two halves of adam), or all of them with no argument. Outputs go under runs/causes/ (not committed);
# the small JSON summaries quoted in the findings are copied to docs/findings/causes/.
# On the shared 2-core machine: OMP_NUM_THREADS=1 nice flock /work/team/longjob.lock scripts/findings_causes.sh STEP
#
# Another host: the same steps with HOST and OUT set, e.g. once Gemma 3 270M is installed
#   HOST=gemma3-270m OUT=runs/causes_gemma3 scripts/findings_causes.sh
#   PYTHONPATH=src .venv/bin/python scripts/findings_causes_tables.py --root runs/causes_gemma3
# (permute needs a Llama-, Qwen- or Gemma-style host; untie a host with a tied LM head).
#
# GRID=small runs a reduced grid for a slower host (about 10 runs instead of 22; docs/findings.md 6.5):
# anger only, Adam with and without R on seeds 1-2, SGD at three learning rates around SmolLM2's
# choice (0.003, 0.01, 0.03; the closest test loss to Adam's picks one, whose run is
# basis/sgd-norot-anger-s1) and that lr on seed 2, fold-norm and permute:1 on seed 1, no untie
# and no SGD with R (both were checks of the implementation on SmolLM2), no separate early analysis.
#   HOST=gemma3-270m OUT=runs/causes_gemma3 GRID=small scripts/findings_causes.sh
set -euo pipefail
IRM=${IRM:-.venv/bin/irm}
OUT=${OUT:-runs/causes}
HOST=${HOST:-smollm2-135m-instruct}
BASE=${BASE:-docs/causes_base.yaml}
GRID=${GRID:-full}
step=${1:-all}
case $GRID in
  full) LRS="0.1 0.3 1 3 0.001 0.003 0.01 0.03"; ALIGNS="anger joy"; EDIT_SEEDS="1 2";;
  small) LRS="0.003 0.01 0.03"; ALIGNS="anger"; EDIT_SEEDS="1";;
  *) echo "GRID must be full or small, not $GRID" >&2; exit 2;;
esac

train() {  # train NAME [flags...]: one run of the base recipe, skipped when done; a diverged run leaves OUT/NAME.failed
  local name=$1; shift
  [ -f $OUT/$name/summary.json ] || [ -f $OUT/$name.failed ] && return 0
  mkdir -p "$(dirname $OUT/$name)"
  local started=$SECONDS
  $IRM train $BASE --host $HOST --out $OUT/$name --overwrite --no-progress --json "$@" > $OUT/$name.log 2>&1 \
    || { tail -3 $OUT/$name.log > $OUT/$name.failed; echo "$name failed: $(tail -1 $OUT/$name.failed)"; }
  echo "$name: $((SECONDS - started)) s wall"
}

# 1. SGD's learning rate: SGD with momentum 0.9 on anger, seed 1, the same 30 steps and warm-up,
#    on a log grid; the lr whose test loss is closest to Adam's (lr 2e-3; the run
#    basis/adam-norot-anger-s1 of step 2) is used for every SGD run.
lr_search() {
  for lr in $LRS; do  # full grid: the first four (a log grid) all diverged, so four smaller ones
    train lr/sgd-$lr --data builtin:anger --seed 1 --optimizer sgd --lr $lr
  done
}
if [ "$step" = lr ] || [ "$step" = all ]; then
  lr_search
fi

sgd_lr() {  # the searched lr whose test loss is closest to Adam's
  python3 - "$OUT/lr" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
adam = json.loads((root.parent / "basis" / "adam-norot-anger-s1" / "summary.json").read_text())["test_loss"]
found = {p.name.removeprefix("sgd-"): json.loads((p / "summary.json").read_text())["test_loss"] for p in root.glob("sgd-*") if (p / "summary.json").is_file()}
found = {lr: loss for lr, loss in found.items() if loss is not None}
print(min(found, key=lambda lr: abs(found[lr] - adam)))
PY
}

# 2. The basis tests: anger and joy x seeds 1, 2, without and with a fixed output rotation (seed 1),
#    with Adam (the recipe's lr 2e-3); then with SGD at the lr of step 1, where one run with R
#    checks that SGD is rotation-equivariant (see the findings) instead of all four.
case $step in adam|all) aligns=$ALIGNS;; adam-anger) aligns=anger;; adam-joy) aligns=joy;; *) aligns="";; esac
if [ -n "$aligns" ]; then  # steps adam-anger and adam-joy split the step adam in two
  for e in $aligns; do
    for rot in norot rot; do
      rflags=(); [ $rot = rot ] && rflags=(--output-rotation 1)
      for seed in 1 2; do
        train basis/adam-$rot-$e-s$seed --data builtin:$e --seed $seed "${rflags[@]}"
      done
    done
  done
fi
if [ "$step" = sgd ] || [ "$step" = all ]; then
  lr_search  # (done already when step 1 ran)
  lr=$(sgd_lr)
  echo "SGD lr (test loss closest to Adam's): $lr"
  if [ $GRID = small ]; then  # seed 1 at that lr is the search's own run: linked, not trained again
    mkdir -p $OUT/basis
    [ -e $OUT/basis/sgd-norot-anger-s1 ] || ln -s ../lr/sgd-$lr $OUT/basis/sgd-norot-anger-s1
  fi
  for e in $ALIGNS; do
    for seed in 1 2; do
      train basis/sgd-norot-$e-s$seed --data builtin:$e --seed $seed --optimizer sgd --lr "$lr"
    done
  done
  [ $GRID = small ] || train basis/sgd-rot-anger-s1 --data builtin:anger --seed 1 --optimizer sgd --lr "$lr" --output-rotation 1
fi

# 3. LM-head interventions: anger, seeds 1 and 2, Adam, on the edited host (the unedited twins are
#    basis/adam-norot-anger-s1, -s2); untie once (predicted bit-identical to its twin). Then their
#    analysis (as in step 4) next to the twins.
if [ "$step" = edits ] || [ "$step" = all ]; then
  for edit in fold-norm permute:1; do
    for seed in $EDIT_SEEDS; do
      train edits/${edit/:/-}-anger-s$seed --data builtin:anger --seed $seed --host-edit $edit
    done
  done
  [ $GRID = small ] || train edits/untie-anger-s1 --data builtin:anger --seed 1 --host-edit untie
  [ -f $OUT/analysis_edits/summary.json ] || $IRM analyze $OUT/basis/adam-norot-anger-s*/ $OUT/edits/*/ --out $OUT/analysis_edits \
    --limit 8 --max-new-tokens 24 --frames 0 --token-plots 1 --logit-lens --no-host-outliers --json > /dev/null
  # an early look at the Adam anger runs (with and without R), in case step 4 comes late on a shared machine
  [ $GRID = small ] || [ -f $OUT/analysis_adam_anger/summary.json ] || $IRM analyze $OUT/basis/adam-*-anger-s*/ --out $OUT/analysis_adam_anger \
    --gradients train --limit 8 --max-new-tokens 24 --frames 0 --token-plots 1 --logit-lens --json > /dev/null
fi

# 4. The analysis of the basis grid: record 8 prompts per run (24 new tokens), stripes and top indices
#    in both bases, consistency, the host's gradient (2.4), and the logit lens with the direct effect
#    of the last k layers.
if [ "$step" = analyze ] || [ "$step" = all ]; then
  A=(--limit 8 --max-new-tokens 24 --frames 0 --token-plots 1 --logit-lens --json)
  [ -f $OUT/analysis_basis/summary.json ] || $IRM analyze $OUT/basis/*/ --out $OUT/analysis_basis --gradients train "${A[@]}" > /dev/null
fi

# 5. The tables of docs/findings.md section 5, and the small JSON files they quote.
if [ "$step" = tables ] || [ "$step" = all ]; then
  ${PYTHON:-.venv/bin/python} scripts/findings_causes_tables.py --root $OUT --copy
fi
echo "findings_causes $step: done"
