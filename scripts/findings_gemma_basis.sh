#!/usr/bin/env bash
# docs/findings.md 6.5: the two Gemma 3 270M basis tests run this session (one run each, anger,
# seed 1, all layers, the study recipe); their twin is the run data-anger_seed-1_layers-all of
# `irm study gemma3-270m` (scripts/study_hosts.sh). Resumable; about 8 minutes each on one thread.
set -euo pipefail
IRM=${IRM:-.venv/bin/irm}
S="--alignments anger --seeds 1 --layers all --resume --no-progress"
mkdir -p runs/gemma_basis
[ -f runs/gemma_basis/rot/findings.json ] || $IRM study gemma3-270m --out runs/gemma_basis/rot $S --output-rotation 1
[ -f runs/gemma_basis/perm/findings.json ] || $IRM study gemma3-270m --out runs/gemma_basis/perm $S --host-edit permute:1
mkdir -p docs/findings/causes_gemma3
cp runs/gemma_basis/rot/findings.json docs/findings/causes_gemma3/adam-rot-anger-s1.json
cp runs/gemma_basis/perm/findings.json docs/findings/causes_gemma3/permute1-anger-s1.json
