#!/usr/bin/env bash
# Every command behind docs/findings.md, in order (about 1.5 hours on an otherwise idle 2-core CPU).
# Each step is resumable or quick to redo; outputs go under runs/ (not committed), and the
# small summaries quoted in docs/findings.md are copied to docs/findings/.
set -euo pipefail
IRM=${IRM:-.venv/bin/irm}
SWEEP=runs/sweep_smollm2/runs

# 1. The sweep: 3 alignments x 2 seeds x 2 layer sets (issue 7).
$IRM sweep docs/sweep_smollm2.yaml --no-progress

# 2. Baselines (issue 6): low-rank IRMs, same recipe, and mean-difference steering vectors.
$IRM sweep docs/baselines_smollm2.yaml --no-progress
for e in anger sadness joy; do
  [ -f runs/steer/$e/model.safetensors ] || $IRM steer fit --target builtin:$e --layers 15 --out runs/steer/$e --json > /dev/null
done

# 3. One comparison table per alignment: host alone, paper IRM, low-rank IRM, steering vector.
for e in anger sadness joy; do
  [ -f runs/compare/$e/report.json ] || $IRM evaluate \
    --irm paper=$SWEEP/data-${e}_seed-1_layers-all/irm \
    --irm lowrank=runs/baselines_smollm2/runs/data-$e/irm \
    --irm steer=runs/steer/$e \
    --strength 1,4 --max-prompts 48 --max-new-tokens 40 --seed 0 --out runs/compare/$e --json > /dev/null
done

# 4. The sweep's analysis: record 8 prompts per run, heatmaps, stripes, consistency, host outliers.
[ -f runs/sweep_smollm2/analysis/summary.json ] || \
  $IRM analyze $SWEEP/* --out runs/sweep_smollm2/analysis --limit 8 --max-new-tokens 24 --frames 0 --token-plots 1 --json \
  > runs/sweep_smollm2/analysis.stdout.json

# 5. Ablations: zero the top-3 indices vs 3 random draws of 3, per alignment (all layers, seed 1).
for e in anger sadness joy; do
  [ -f runs/ablate/$e.json ] || $IRM ablate --irm $SWEEP/data-${e}_seed-1_layers-all --indices auto --k 3 --draws 3 \
    --limit 16 --max-new-tokens 32 --target $e --out runs/ablate/$e.json --json > /dev/null
done
# A stronger test: the top 10 indices, 5 random draws, 24 prompts.
for e in anger sadness joy; do
  [ -f runs/ablate/${e}_k10.json ] || $IRM ablate --irm $SWEEP/data-${e}_seed-1_layers-all --indices auto --k 10 --draws 5 \
    --limit 24 --max-new-tokens 32 --target $e --out runs/ablate/${e}_k10.json --json > /dev/null
done

# 6. Why stripes? The host's own loss gradient at the injection points, on each run's training data.
[ -f runs/sweep_smollm2/gradients/summary.json ] || \
  $IRM analyze $SWEEP/* --out runs/sweep_smollm2/gradients --gradients train --gradient-rows 32 --no-host-outliers \
    --frames 0 --token-plots 0 --json > /dev/null

# 7. One run 8x longer (240 steps), analysed next to its 30-step twin, and ablated.
[ -f runs/long_anger/summary.json ] || $IRM train docs/long_smollm2.yaml --no-progress --json > /dev/null
[ -f runs/long_anger_analysis/summary.json ] || \
  $IRM analyze runs/long_anger $SWEEP/data-anger_seed-1_layers-all --out runs/long_anger_analysis \
    --limit 8 --max-new-tokens 24 --frames 0 --token-plots 1 --gradients train --json > /dev/null
[ -f runs/ablate/long_anger.json ] || $IRM ablate --irm runs/long_anger --indices auto --k 3 --draws 3 \
  --limit 16 --max-new-tokens 32 --target anger --out runs/ablate/long_anger.json --json > /dev/null

# 8. The tables of docs/findings.md, and the small JSON files and images it quotes.
.venv/bin/python scripts/findings_tables.py --copy
echo "findings: done"
