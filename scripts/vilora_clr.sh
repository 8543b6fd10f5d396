#!/usr/bin/env bash
# VILoRA with IVON's custom LR schedule: cola, stsb, mrpc, rte.
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" vilora_clr "$@"
