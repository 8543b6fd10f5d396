#!/usr/bin/env bash
# Full fine-tuning with AdamW on 7 tasks; STS-B is fine-tuned with IVON (table row full_ivon,
# ivon_weight_decay 1e-5) and lands in full_ivon/. Rank 2 only: the table has no rank-4 full runs.
# Knobs (TASKS, RANK, SEEDS, ...) and the output layout: see launch.sh. Extra arguments go to every run.
exec "$(dirname "${BASH_SOURCE[0]}")/launch.sh" full,full_ivon "$@"
