#!/usr/bin/env bash
# Shared launcher of the paper's GLUE sweeps. The method scripts (vilora.sh, adalora.sh, ...) are one line
# on top of this one:
#
#   launch.sh METHOD[,METHOD...] [training args appended to every command...]
#
# METHOD is a value of the `script` column of scripts/hparams.tsv; sweep.py turns the rows into one
# run_glue_no_trainer.py command per (rank, task, criterion, seed). Knobs (environment variables):
#
#   TASKS       tasks to run (space/comma list)      default: the tasks the table has for METHOD
#   RANK        final average rank, 2 or 4 (or "2 4") default: 2
#   SEEDS       seeds                                 default: the table's (2021 2022 2023 2024 2025)
#   CRITERIA    criteria of the *_criterion scripts   default: SNR_mean_abs SNR mean sigma
#   MODEL       model name or path                    default: the table's (microsoft/deberta-v3-base)
#   GLUE_DIR    local GLUE copy, passed as --glue_dir default: unset (the script's own default)
#   OUTPUT_ROOT root of all run directories           default: <repo>/outputs
#   DONE_ROOT   kept results of finished runs         default: unset
#               a run with DONE_ROOT/<run name>/all_results.json is skipped too (to finish a sweep on a new
#               machine from its kept results, e.g. DONE_ROOT=bench/results/cpu_glue_k4 for bench/cpu_glue.sh)
#   EXTRA_ARGS  string appended to every command      default: empty
#   PYTHON      interpreter                           default: <repo>/.venv/bin/python, else python3
#   TRAIN_SCRIPT the training script                  default: <repo>/run_glue_no_trainer.py
#   HPARAMS     the hyperparameter table              default: scripts/hparams.tsv (bench/cpu_glue.sh has its own)
#   LAUNCHER    local | accelerate | sbatch           default: local
#   NUM_PROCESSES  processes for `accelerate launch`  default: 1 (>1 also makes sbatch jobs use accelerate)
#               >1 trains data-parallel (`--multi_gpu`: one process per GPU; gloo on a CPU-only machine).
#               The batch of one update is NUM_PROCESSES x --per_device_train_batch_size: to keep the
#               paper's 32 on 2 GPUs, pass EXTRA_ARGS="--per_device_train_batch_size 16".
#   ACCELERATE  the accelerate CLI                    default: the one next to PYTHON, else `accelerate`
#   ACCELERATE_ARGS  extra `accelerate launch` options (split like a shell line), e.g. for several machines:
#               "--num_machines 2 --machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500"
#               (NUM_PROCESSES then counts the processes of all machines)
#   PARTITION, GPUS (1), TIME_LIMIT (24:00:00), SBATCH_ARGS (raw extra sbatch options): for LAUNCHER=sbatch
#   DRY_RUN=1   print the commands (stdout, one per line) and run nothing
#
# Newlines in knobs: sweep.py hands each command to this script as one line, so a newline inside a word
# would split a command in two. A newline between words (TASKS, SEEDS, CRITERIA, RANK, EXTRA_ARGS,
# ACCELERATE_ARGS, SBATCH_ARGS) is whitespace; a word that holds one (quoted inside EXTRA_ARGS, or in MODEL,
# GLUE_DIR, OUTPUT_ROOT, an argument) is refused with one line and exit status 2 before anything runs.
#
# Run directory: $OUTPUT_ROOT/<method>[-<criterion>]/rank<R>/<task>/seed<S>/, with the run's stdout and
# stderr appended to train.log (after a line with the date and the command). A run whose all_results.json
# exists is skipped. A failed run, including one whose folder or train.log cannot be created (e.g. a file
# in the way), is reported and the sweep goes on. A run that exits with status 75 is busy: the training
# script found its folder in use by another run (local launcher; `accelerate launch` turns 75 into 1); it is
# neither failed nor done, and the next sweep tries it again. A summary ends the output ("N done, N failed,
# N skipped[, N busy (held by another process)], of N runs", then the failed and busy runs), and the exit
# status is 1 if any run failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

if [ $# -lt 1 ]; then
    echo "usage: $(basename "$0") METHOD[,METHOD...] [training args...]" >&2
    exit 2
fi
methods="$1"
shift

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
TRAIN_SCRIPT="${TRAIN_SCRIPT:-$repo/run_glue_no_trainer.py}"
OUTPUT_ROOT="${OUTPUT_ROOT:-$repo/outputs}"
LAUNCHER="${LAUNCHER:-local}"
DRY_RUN="${DRY_RUN:-0}"
NUM_PROCESSES="${NUM_PROCESSES:-1}"
GLUE_DIR="${GLUE_DIR:-}"
# Absolute paths, so that commands (and Slurm jobs) do not depend on the directory they start in.
case "$OUTPUT_ROOT" in /*) ;; *) OUTPUT_ROOT="$PWD/$OUTPUT_ROOT" ;; esac
case "$GLUE_DIR" in /* | "") ;; *) GLUE_DIR="$PWD/$GLUE_DIR" ;; esac
DONE_ROOT="${DONE_ROOT:-}"
case "$DONE_ROOT" in /* | "") ;; *) DONE_ROOT="$PWD/$DONE_ROOT" ;; esac
if [ -n "$DONE_ROOT" ] && [ ! -d "$DONE_ROOT" ]; then
    echo "launch: error: DONE_ROOT=$DONE_ROOT is not a folder (a root of finished runs, or unset)" >&2
    exit 2
fi

case "$LAUNCHER" in
    local | accelerate | sbatch) ;;
    *) echo "launch: error: LAUNCHER must be local, accelerate or sbatch, got '$LAUNCHER'" >&2; exit 2 ;;
esac
if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]]; then
    echo "launch: error: NUM_PROCESSES must be a positive integer, got '$NUM_PROCESSES'" >&2
    exit 2
fi

if [ "$DRY_RUN" != 1 ] && [ ! -f "$TRAIN_SCRIPT" ]; then
    echo "launch: error: training script $TRAIN_SCRIPT not found (set TRAIN_SCRIPT)" >&2
    exit 2
fi

# The interpreter (or accelerate) that starts the training script; sbatch wraps this same command.
if [ "$LAUNCHER" = accelerate ] || [ "$NUM_PROCESSES" -gt 1 ]; then
    if [ -z "${ACCELERATE:-}" ]; then
        python_path="$(command -v "$PYTHON" || true)"
        if [ -n "$python_path" ] && [ -x "$(dirname "$python_path")/accelerate" ]; then
            ACCELERATE="$(dirname "$python_path")/accelerate"
        else
            ACCELERATE=accelerate
        fi
    fi
    # -d '': read every line, not only the first; a newline is whitespace like a space.
    read -r -d '' -a accelerate_extra <<< "${ACCELERATE_ARGS:-}" || true
    starter=("$ACCELERATE" launch --num_processes "$NUM_PROCESSES")
    # Without --multi_gpu (or an `accelerate config` saying so) accelerate starts a single process.
    if [ "$NUM_PROCESSES" -gt 1 ]; then starter+=(--multi_gpu); fi
    starter+=(${accelerate_extra[@]+"${accelerate_extra[@]}"} "$TRAIN_SCRIPT")
else
    starter=("$PYTHON" "$TRAIN_SCRIPT")
fi
read -r -d '' -a sbatch_extra <<< "${SBATCH_ARGS:-}" || true

quote_cmd() {  # print words so that a POSIX shell (and Python's shlex.split) reads back the same words
    local words=() w q="'"
    for w in "$@"; do
        if [[ "$w" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
            words+=("$w")
        else
            words+=("$q${w//$q/$q\\$q$q}$q")
        fi
    done
    local IFS=' '
    echo "${words[*]}"
}

# One line per run: output dir and arguments separated by 0x1f (see sweep.py). A bad knob exits 2 here.
plan="$("$PYTHON" "$here/sweep.py" --methods "$methods" --rank "${RANK:-2}" --tasks "${TASKS:-}" \
    --seeds "${SEEDS:-}" --criteria "${CRITERIA:-}" --model "${MODEL:-}" --glue_dir "$GLUE_DIR" \
    --output_root "$OUTPUT_ROOT" --extra_args "${EXTRA_ARGS:-}" --table "${HPARAMS:-$here/hparams.tsv}" \
    -- "$@")" || exit $?

total="$(printf '%s\n' "$plan" | grep -c .)" || true
# Ctrl-C (or a TERM) stops the whole sweep, not only the current run. The run is started in the background
# and waited for, because bash would only act on a trapped signal after a foreground command ends; the
# interrupted run has no all_results.json, so the next sweep redoes it.
child=""
on_signal() {
    if [ -n "$child" ]; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    echo "launch: interrupted${child:+ (stopped the run in progress)}" >&2
    exit 130
}
trap on_signal INT TERM
n=0 n_done=0 n_skipped=0
failed=() busy=()
while IFS=$'\x1f' read -r -u 3 -a fields; do
    [ ${#fields[@]} -gt 0 ] || continue
    n=$((n + 1))
    out="${fields[0]}"
    run_args=("${fields[@]:1}")
    rest="${out%/*/*/*/*}"
    name="${out#"$rest"/}"  # <method>/rank<R>/<task>/seed<S>
    tag="[$n/$total]"

    # Finished here, or kept under DONE_ROOT: the reason (stderr) and the mark (dry-run stdout) say which.
    done_in=""
    if [ -f "$out/all_results.json" ]; then
        done_in="$out" reason="all_results.json exists" mark="done"
    elif [ -n "$DONE_ROOT" ] && [ -f "$DONE_ROOT/$name/all_results.json" ]; then
        done_in="$DONE_ROOT/$name" reason="done in DONE_ROOT" mark="done in DONE_ROOT"
    fi
    if [ -n "$done_in" ]; then
        n_skipped=$((n_skipped + 1))
        echo "$tag skip ($reason): $name" >&2
        [ "$DRY_RUN" = 1 ] && echo "# skip ($mark): $done_in"
        continue
    fi

    cmd=("${starter[@]}" "${run_args[@]}")
    if [ "$LAUNCHER" = sbatch ]; then
        job="$(echo "$name" | tr '/' '_')"
        sbatch_cmd=(sbatch --job-name "$job" --output "$out/train.log" --time "${TIME_LIMIT:-24:00:00}")
        [ "${GPUS:-1}" != 0 ] && sbatch_cmd+=(--gres "gpu:${GPUS:-1}")
        [ -n "${PARTITION:-}" ] && sbatch_cmd+=(--partition "$PARTITION")
        cmd=("${sbatch_cmd[@]}" "${sbatch_extra[@]}" --wrap "$(quote_cmd exec "${cmd[@]}")")
    fi

    if [ "$DRY_RUN" = 1 ]; then
        quote_cmd "${cmd[@]}"
        n_done=$((n_done + 1))
        continue
    fi

    # A folder that cannot be made (a file in its path, no permission) fails this run only.
    if ! err="$({ mkdir -p -- "$out" && : >>"$out/train.log"; } 2>&1)"; then
        failed+=("$name (cannot create $out/train.log: ${err##*: })")
        echo "$tag FAILED (cannot create $out/train.log: ${err##*: })" >&2
        continue
    fi
    if [ "$LAUNCHER" = sbatch ]; then
        echo "$tag submit: $name" >&2
        if "${cmd[@]}" </dev/null >&2; then
            n_done=$((n_done + 1))
        else
            failed+=("$name (sbatch exit $?)")
        fi
        continue
    fi

    echo "$tag run: $name" >&2
    start=$SECONDS
    status=0
    # Appended, so that the log of an earlier failed attempt survives a rerun.
    echo "=== $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(quote_cmd "${cmd[@]}")" >>"$out/train.log"
    "${cmd[@]}" >>"$out/train.log" 2>&1 </dev/null &
    child=$!
    wait "$child" || status=$?
    child=""
    if [ $status -eq 0 ] && [ -f "$out/all_results.json" ]; then
        n_done=$((n_done + 1))
        echo "$tag done in $((SECONDS - start)) s: $name" >&2
    elif [ $status -eq 75 ]; then  # the training script's "in use by another run" (EX_TEMPFAIL)
        busy+=("$name")
        echo "$tag busy (held by another process), see $out/train.log" >&2
    else
        [ $status -eq 0 ] && status="0 without all_results.json"
        failed+=("$name (exit $status, log: $out/train.log)")
        echo "$tag FAILED (exit $status), see $out/train.log" >&2
    fi
done 3<<< "$plan"

verb=done
[ "$LAUNCHER" = sbatch ] && verb=submitted
[ "$DRY_RUN" = 1 ] && verb="to run (dry run)"
n_busy=""
[ ${#busy[@]} -gt 0 ] && n_busy=", ${#busy[@]} busy (held by another process)"
echo "summary: $n_done $verb, ${#failed[@]} failed, $n_skipped skipped$n_busy, of $total runs" >&2
for f in "${failed[@]}"; do
    echo "  failed: $f" >&2
done
for b in "${busy[@]}"; do
    echo "  busy: $b" >&2
done
[ ${#failed[@]} -eq 0 ]
