#!/usr/bin/env bash
# Every command behind docs/findings.md section 5, "What causes the stripes" (issue 18), in
# order. Each step skips what is already done, so the script resumes where it stopped.
# Run one step with `scripts/findings_causes.sh STEP` (lr, basis, edits, analyze, lens,
# tables), or all of them with no argument. Outputs go under runs/causes/ (not committed);
# the small JSON summaries quoted in the findings are copied to docs/findings/causes/.
# On the shared 2-core machine: OMP_NUM_THREADS=1 nice flock /work/team/longjob.lock scripts/findings_causes.sh STEP
set -euo pipefail
IRM=${IRM:-.venv/bin/irm}
OUT=runs/causes
BASE=docs/causes_base.yaml
step=${1:-all}

train() {  # train NAME [flags...]: one run of the base recipe, skipped when done; a diverged run leaves OUT/NAME.failed
  local name=$1; shift
  [ -f $OUT/$name/summary.json ] || [ -f $OUT/$name.failed ] && return 0
  mkdir -p $OUT
  $IRM train $BASE --out $OUT/$name --overwrite --no-progress --json "$@" > $OUT/$name.log 2>&1 \
    || { tail -3 $OUT/$name.log > $OUT/$name.failed; echo "$name failed: $(tail -1 $OUT/$name.failed)"; }
}

# 1. SGD's learning rate: SGD with momentum 0.9 on anger, seed 1, the same 30 steps and warm-up,
#    on a log grid; the lr whose test loss is closest to Adam's (lr 2e-3) is used below.
if [ "$step" = lr ] || [ "$step" = all ]; then
  train lr/adam-2e-3 --data builtin:anger --seed 1
  for lr in 0.01 0.1 1 10; do
    train lr/sgd-$lr --data builtin:anger --seed 1 --optimizer sgd --lr $lr
  done
fi
