#!/usr/bin/env bash
# VILoRA: IVON posterior importance SNR(|theta|) (SNR_mean_abs): sst2, qnli, mnli, qqp (vilora_clr.sh has
# the tasks that use the custom LR schedule).
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" vilora "$@"
