#!/usr/bin/env bash
# VILoRA importance-criterion ablation: every criterion in CRITERIA (default SNR_mean_abs SNR mean sigma)
# on sst2, qnli, mnli, qqp; runs go to vilora_criterion-<criterion>/.
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" vilora_criterion "$@"
