#!/usr/bin/env bash
# AdaLoRA sensitivity importance, IVON with the custom LR schedule: cola, stsb, mrpc, rte.
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" adalora_ivon_clr "$@"
