#!/usr/bin/env bash
# AdaLoRA: sensitivity importance, AdamW, all 8 tasks.
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" adalora "$@"
