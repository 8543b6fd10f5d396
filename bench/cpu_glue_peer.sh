#!/usr/bin/env bash
# The peer's numbers beside the CPU grid's: Hugging Face PEFT's LoRA and AdaLoRA at the grid's exact settings
# (bench/cpu_hparams.tsv rows, same model, data, seeds and training script), in the separate venv that
# `make peer-venv` builds. Each command is the grid's command with the interpreter and the script swapped for
# .venv-hfpeft/bin/python and bench/peer_hf_peft.py (our run_glue_no_trainer.py with the peer's adapters).
#
#   make peer-venv
#   GLUE_DIR=../shared/glue bash bench/cpu_glue_peer.sh
#   .venv/bin/python bench/collect_results.py outputs/cpu_glue_k4_peer bench/results/cpu_glue_k4_peer
#
# Knobs: GLUE_DIR (default ../shared/glue), OUTPUT_ROOT (default outputs/cpu_glue_k4_peer), TASKS (mrpc),
# SEEDS (2021 2022 2023), METHODS (lora_all,adalora: the peer has no IVON), HF_PEFT_PYTHON (default
# .venv-hfpeft/bin/python), and every knob of scripts/launch.sh. Finished runs are skipped; unlike the grid's,
# the peer's runs do not checkpoint (its AdaLoRA has no allocator state to save), so a stopped one starts again.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
PEER="${HF_PEFT_PYTHON:-$repo/.venv-hfpeft/bin/python}"
if [ ! -x "$PEER" ]; then
    echo "cpu_glue_peer: no peer interpreter at $PEER; run 'make peer-venv' or set HF_PEFT_PYTHON" >&2
    exit 2
fi
name=cpu_glue_peer
unset PYTHON  # the model is found by our interpreter; the runs use the peer's
source "$here/grid_inputs.sh"  # PYTHON (ours), MODEL and GLUE_DIR
export PYTHON="$PEER"
export TRAIN_SCRIPT="$here/peer_hf_peft.py"
export HPARAMS="$here/cpu_hparams.tsv"
export OUTPUT_ROOT="${OUTPUT_ROOT:-$repo/outputs/cpu_glue_k4_peer}"
export TASKS="${TASKS:-mrpc}"

status=0
for seed in ${SEEDS:-2021 2022 2023}; do
    SEEDS="$seed" "$repo/scripts/launch.sh" "${METHODS:-lora_all,adalora}" || status=$?
done
exit "$status"
