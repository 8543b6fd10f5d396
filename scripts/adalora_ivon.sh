#!/usr/bin/env bash
# AdaLoRA sensitivity importance, trained with IVON: sst2, qnli, mnli, qqp (the tasks without the
# custom LR schedule; adalora_ivon_clr.sh has the others).
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" adalora_ivon "$@"
