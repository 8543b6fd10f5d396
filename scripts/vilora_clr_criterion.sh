#!/usr/bin/env bash
# VILoRA criterion ablation with the custom LR schedule: every criterion in CRITERIA (default
# SNR_mean_abs SNR mean sigma) on cola, stsb, mrpc, rte; runs go to vilora_clr_criterion-<criterion>/.
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" vilora_clr_criterion "$@"
