#!/usr/bin/env bash
# The cross-host study of issue 17: `irm study` (the paper's battery) on four real hosts,
# then the one cross-host table of docs/findings.md.
#
#   scripts/study_hosts.sh                    # every host in turn, then the table
#   scripts/study_hosts.sh gemma3-270m        # one host (the table is printed from what exists)
#
# Every study is resumable: each command carries --resume, so running the script again after
# a crash, kill -9 or timeout continues where it stopped (finished runs and stages are
# skipped). To keep each job under ~40 minutes on the shared machine, run it in pieces:
#
#   mkdir -p runs/study && OMP_NUM_THREADS=1 nohup nice -n 10 flock /work/team/longjob.lock \
#       timeout -s KILL 35m scripts/study_hosts.sh smollm2-135m-instruct > runs/study/smollm2.log 2>&1 &
#
# and repeat the same line until runs/study/HOST/findings.json exists. SmolLM2 needs about
# 30 minutes of one CPU core (measured on a 2-run study, extrapolated stage by stage): about
# 75 minutes of wall time on the busy shared machine, so two or three such pieces.
# The hosts other than SmolLM2 need `make hosts` (issue 17's host packages) first.
set -euo pipefail
IRM=${IRM:-.venv/bin/irm}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/study}
HOSTS=("$@")
[ ${#HOSTS[@]} -gt 0 ] || HOSTS=(smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct qwen2.5-coder-1.5b-instruct)

# The battery of docs/findings.md section 2 (SmolLM2), on every host: 3 alignments x 2 seeds
# x {all layers, layers 0-7} = 12 runs of 30 steps (lr 2e-3, 6 warm-up steps, batch 8, rows
# cut to 64 tokens); 8 recorded prompts x 24 tokens per run; top-10 indices; the top 10
# ablated against 5 random draws of 10 on 24 prompts, for each alignment's seed-1 all-layer run.
FULL=(--alignments anger,sadness,joy --seeds 2 --layers all,0-7 --steps 30)
# Qwen2.5-Coder-1.5B: fewer runs (3: one seed, all layers). Its paper-shaped IRM on all 28
# layers has ~269 M parameters (~4.3 GB with its gradients and Adam state) beside the 6.2 GB
# fp32 host: about 11 GB before activations.
# Where that does not fit, add --rank 64 (low-rank IRMs; say so next to the table).
SMALL=(--alignments anger,sadness,joy --seeds 1 --layers all --steps 30)

for host in "${HOSTS[@]}"; do
  case "$host" in
    qwen2.5-coder-1.5b-instruct) settings=("${SMALL[@]}") ;;
    *) settings=("${FULL[@]}") ;;
  esac
  echo "== $host: $(date -u +%H:%M:%S)"
  $IRM study "$host" --out "$OUT/$host" "${settings[@]}" --resume --no-progress
done

# One row per host that has finished.
found=("$OUT"/*/findings.json)
[ -e "${found[0]}" ] && $PY scripts/study_tables.py "${found[@]}" | tee "$OUT/table.md"
echo "study_hosts: done"
