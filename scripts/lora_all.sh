#!/usr/bin/env bash
# LoRA (r = final rank) on query/key/value/dense of every layer, AdamW, all 8 tasks.
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" lora_all "$@"
