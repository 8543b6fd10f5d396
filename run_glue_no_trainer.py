#!/usr/bin/env python
"""Fine-tune a sequence classifier on a GLUE task: full fine-tuning, LoRA, AdaLoRA or VILoRA, with AdamW or IVON.

VILoRA is AdaLoRA whose rank allocation scores each singular-value triplet from IVON's Gaussian posterior
N(mu, sigma^2) instead of AdaLoRA's gradient sensitivity ("A Bayesian Interpretation of Adaptive Low-Rank
Adaptation", Chen & Garner 2024). The flags follow the Hugging Face `run_glue_no_trainer.py` example and the
paper's fork of it (the authors' training script); the fork's known defects are fixed here:

* gradient accumulation updates after every `gas` micro-batches and at the end of an epoch (not after the first);
* IVON Monte-Carlo evaluation averages the predictions of all samples, for STS-B too;
* MNLI reports matched (`eval_accuracy`) and mismatched (`eval_accuracy_mm`) accuracy;
* checkpoints hold the rank allocator state and IVON's step counter, and resuming is exact on CPU.

Run `python run_glue_no_trainer.py --help` for the flags. Outputs in `--output_dir`: the adapter (or full model)
and tokenizer, `run_config.json`, `log.jsonl`, `rank_pattern.json` (AdaLoRA/VILoRA), `ivon_state.pt` (IVON),
`checkpoints/step_<n>/`, and `all_results.json`, written last, so its presence means the run finished.
`.run_manifest.json` lists what the script wrote there, the only files it ever deletes (--overwrite_output_dir);
`.lock` keeps a second run out while one uses the folder (exit status 75).
A run killed at any point continues exactly where its last checkpoint left off with
`--resume_from_checkpoint latest` (same flags). On a CPU shared with other jobs, set OMP_NUM_THREADS=1:
oversubscribed torch threads can make each step ten times slower.

Several processes (`accelerate launch --num_processes N run_glue_no_trainer.py ...`, or torchrun; gloo on CPUs)
train data-parallel on a global batch of N x --per_device_train_batch_size examples, each process taking its
share of every batch (`shard_batch`), so that one update sees the examples a single process with the global
batch would. AdamW gradients are averaged by DDP at accumulation boundaries only. Under IVON each process
draws its own posterior sample (its own RNG stream, `seed_process`), backpropagates without DDP's all-reduce,
and IVON(sync=True) averages the gradient statistics in step(), so all processes hold one posterior; AdaLoRA's
sensitivity score then uses gradients averaged over the processes (`average_gradients`), so rank allocation
is identical everywhere. Evaluation is split over the processes and gathered. The main process writes all
outputs; checkpoints add one RNG state file per process.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import json
import math
import os
import pickle
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import evaluate as hf_evaluate
import numpy as np
import peft
import torch
import transformers
from accelerate import Accelerator
from safetensors import SafetensorError
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    default_data_collator,
    get_scheduler,
)

METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "glue"
HUB_DATASET = "nyu-mll/glue"

TASK_TO_KEYS = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
TASKS = tuple(TASK_TO_KEYS)
# Class names in the order of the Hub's ClassLabel ids; stsb is a regression task (float label).
LABEL_NAMES = {
    "cola": ["unacceptable", "acceptable"],
    "mnli": ["entailment", "neutral", "contradiction"],
    "mrpc": ["not_equivalent", "equivalent"],
    "qnli": ["entailment", "not_entailment"],
    "qqp": ["not_duplicate", "duplicate"],
    "rte": ["entailment", "not_entailment"],
    "sst2": ["negative", "positive"],
    "stsb": None,
    "wnli": ["not_entailment", "entailment"],
}
PRIMARY_METRIC = {"cola": "matthews_correlation", "stsb": "pearson"}  # every other task: accuracy
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")  # stepped with the dev metric after each evaluation

# Local GLUE copy (the standard GLUE download layout): folder, header row?, {hub column: file column},
# label column (-1 = last, because MNLI train and dev differ in width), and how the file spells the label.
GLUE_FOLDER = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP",
               "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
GLUE_TSV = {
    "cola": (False, {"sentence": 3}, 1),
    "sst2": (True, {"sentence": 0}, 1),
    "mrpc": (True, {"sentence1": 3, "sentence2": 4}, 0),
    "stsb": (True, {"sentence1": 7, "sentence2": 8}, 9),
    "qqp": (True, {"question1": 3, "question2": 4}, 5),
    "mnli": (True, {"premise": 8, "hypothesis": 9}, -1),
    "qnli": (True, {"question": 1, "sentence": 2}, 3),
    "rte": (True, {"sentence1": 1, "sentence2": 2}, 3),
    "wnli": (True, {"sentence1": 1, "sentence2": 2}, 3),
}
GLUE_SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv",
                    "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"}
# Used only when peft (which owns the registry) cannot be imported, so that flag checking still works.
_FALLBACK_CRITERIA = ("sensitivity", "SNR_mean_abs", "SNR", "mean", "sigma", "E_mean_abs")


class UsageError(Exception):
    """A user mistake (bad flag, bad data): reported as one line on stderr, exit status 2, nothing written."""


class TrainingError(Exception):
    """Training cannot go on (e.g. a non-finite loss): reported as one line on stderr, exit status 1."""


class AlreadyFinished(Exception):
    """The output directory already holds a finished run: say so and exit 0."""


class OutputDirBusy(Exception):
    """Another live run holds the output directory's lock: one line on stderr, exit status EXIT_BUSY."""


EXIT_BUSY = 75  # EX_TEMPFAIL: scripts/launch.sh counts such a run as busy (try again later), not as failed


# ----------------------------------------------------------------------------------------------- arguments
class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the whole usage block; one line is enough
        raise UsageError(message)


def _bool_value(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _steps_or_epoch(text: str) -> str:
    if text == "epoch" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected a positive number of steps or 'epoch', got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (the paper's fork's flag names and defaults, plus --glue_dir and some safety flags)."""
    p = _OneLineErrorParser(description="Fine-tune on a GLUE task with LoRA/AdaLoRA/VILoRA and AdamW/IVON.")
    g = p.add_argument_group("data and model")
    g.add_argument("--task_name", type=str.lower, default=None, choices=TASKS, help="GLUE task")
    g.add_argument("--glue_dir", default=None, help="local GLUE copy (<TASK>/train.tsv, dev.tsv); default: the Hub")
    g.add_argument("--train_file", default=None,
                   help="csv/json training file (used instead of GLUE data; --task_name then only names the metric)")
    g.add_argument("--validation_file", default=None, help="csv/json validation file")
    g.add_argument("--max_length", type=int, default=128,
                   help="longest tokenised input; longer pairs are truncated (at most the model's position count)")
    g.add_argument("--pad_to_max_length", action="store_true",
                   help='pad every example to --max_length (default: pad each batch to its longest example)')
    g.add_argument("--model_name_or_path", required=True,
                   help='model folder or Hub name, e.g. microsoft/deberta-v3-base or a local MiniLM copy')
    g.add_argument("--use_slow_tokenizer", action="store_true",
                   help='use the Python tokenizer instead of the fast (Rust) one')
    g.add_argument("--trust_remote_code", type=_bool_value, default=False,
                   help="allow a model folder's own Python code (true/false); only for models you trust")
    g.add_argument("--ignore_mismatched_sizes", action="store_true",
                   help='re-initialise checkpoint weights whose shapes do not fit the task (e.g. another classifier head)')
    g.add_argument("--fp16", action="store_true", help="same as --mixed_precision fp16")
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                   help='mixed precision through accelerate (weights, adapters and IVON state stay float32); with IVON use bf16')
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help='recompute activations in the backward pass to save memory')

    g = p.add_argument_group("training loop")
    g.add_argument("--per_device_train_batch_size", type=int, default=8,
                   help="examples per process; an update sees this x the number of processes")
    g.add_argument("--per_device_eval_batch_size", type=int, default=8,
                   help='evaluation examples per process')
    g.add_argument("--learning_rate", type=float, default=5e-5,
                   help='peak learning rate of the --lr_scheduler_type schedule (ignored with --use_custom_lr_schedule, whose values are absolute)')
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW only")
    g.add_argument("--num_train_epochs", type=int, default=3,
                   help='passes over the training data (--max_train_steps overrides)')
    g.add_argument("--max_train_steps", type=int, default=None, help="optimizer updates; overrides epochs")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="micro-batches per optimizer update (an epoch's last group may be shorter)")
    g.add_argument("--lr_scheduler_type", default="linear",
                   choices=[s.value for s in transformers.SchedulerType])
    g.add_argument("--lr_scheduler_kwargs", type=json.loads, default=None,
                   help="JSON dict of extra scheduler arguments, e.g. '{\"min_lr_rate\": 0.1}'")
    g.add_argument("--num_warmup_steps", type=int, default=0,
                   help='updates of linear warm-up, for both schedules')
    g.add_argument("--output_dir", default=None,
                   help="folder of the run's outputs, log and checkpoints")
    g.add_argument("--overwrite_output_dir", action="store_true",
                   help='start over in an output folder that holds another (finished or unfinished) run')
    g.add_argument("--seed", type=int, default=None, help="default: a random seed, recorded in run_config.json")
    g.add_argument("--checkpointing_steps", type=_steps_or_epoch, default=None, help="N updates or 'epoch'")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder or 'latest'")
    g.add_argument("--eval_steps", type=int, default=0,
                   help='also evaluate every N updates, from epoch --eval_after_epochs on (0: at epoch ends only)')
    g.add_argument("--eval_after_epochs", type=int, default=1,
                   help='first epoch (0-based) in which --eval_steps evaluations happen')
    g.add_argument("--with_tracking", action="store_true",
                   help='log to TensorBoard/W&B through accelerate (OUTPUT_DIR is the project folder)')
    g.add_argument("--report_to", default="all", choices=("all", "tensorboard", "wandb"),
                   help='tracker for --with_tracking: all (whichever is installed), tensorboard or wandb')
    g.add_argument("--project_prefix", default="glue_no_trainer_vilora_",
                   help='tracker project name prefix (the task name is appended)')
    g.add_argument("--eval_only", action="store_true",
                   help='evaluate --lora_path (or the model) on the dev set without training')
    g.add_argument("--push_to_hub", action="store_true",
                   help="upload the outputs (adapter or model, tokenizer, results; not checkpoints) to a Hub model "
                        "repository when training ends; the login is checked before training starts")
    g.add_argument("--hub_model_id", default=None,
                   help="the repository to push to (default: <your user>/<output_dir's name>)")
    g.add_argument("--hub_token", default=None, help="Hub token (default: the saved login, or HF_TOKEN)")

    g = p.add_argument_group("LoRA / AdaLoRA / VILoRA")
    g.add_argument("--apply_lora", action="store_true",
                   help='train adapters (--lora_type) instead of fine-tuning the whole model')
    g.add_argument("--lora_type", default="lora", help="lora | adalora | vilora")
    g.add_argument("--lora_path", default=None,
                   help="continue from (or, with --eval_only, evaluate) a saved adapter; its config sets the type")
    g.add_argument("--lora_alpha", type=int, default=8,
                   help='adapter scaling numerator (> 0): LoRA scales by alpha / r, AdaLoRA by alpha / init_r')
    g.add_argument("--lora_r", type=int, default=None,
                   help='LoRA rank (default 8)')
    g.add_argument("--lora_dropout", type=float, default=0.0,
                   help="dropout on the adapter's input, in [0, 1)")
    g.add_argument("--lora_modules", default="", help="comma list of target modules")
    g.add_argument("--adalora_target_r", type=int, default=8,
                   help='AdaLoRA/VILoRA: final average rank per adapted matrix (the final budget)')
    g.add_argument("--adalora_init_r", type=int, default=12,
                   help='AdaLoRA/VILoRA: initial rank per adapted matrix')
    g.add_argument("--adalora_tinit", type=int, default=0,
                   help='AdaLoRA/VILoRA: updates before the budget starts to shrink')
    g.add_argument("--adalora_tfinal", type=int, default=0,
                   help='AdaLoRA/VILoRA: last updates trained at the final budget')
    g.add_argument("--adalora_delta_t", type=int, default=100,
                   help='AdaLoRA/VILoRA: mask the least important triplets every N updates while the budget shrinks')
    g.add_argument("--adalora_orth_reg_weight", type=float, default=0.5,
                   help='AdaLoRA/VILoRA: weight of the orthogonality penalty on A and B')
    g.add_argument("--vilora_criterion", default="SNR_mean_abs",
                   help="VILoRA importance score from IVON's posterior: SNR_mean_abs (SNR(|θ|), the paper's "
                        "default), SNR (|μ|/σ), mean (|μ|), sigma (1/σ) or E_mean_abs (E|θ|)")

    g = p.add_argument_group("IVON")
    g.add_argument("--use_ivon", action="store_true",
                   help='train with IVON instead of AdamW (implied by --lora_type vilora)')
    g.add_argument("--ivon_ess", type=float, default=0, help="0 = number of training examples")
    g.add_argument("--ivon_hess_init", type=float, default=1.0,
                   help="IVON's initial Hessian h0 (> 0)")
    g.add_argument("--ivon_beta1", type=float, default=0.9,
                   help="IVON's gradient momentum decay, in [0, 1]")
    g.add_argument("--ivon_beta2", type=float, default=0.99999,
                   help="IVON's Hessian decay, in [0, 1]; 1 - beta2 is the share of a new estimate per update")
    g.add_argument("--ivon_weight_decay", type=float, default=1e-8,
                   help="IVON's weight decay δ (the prior precision per example), >= 0")
    g.add_argument("--ivon_train_mc_samples", type=int, default=1,
                   help='posterior samples (forward/backward passes) per micro-batch while training')
    g.add_argument("--ivon_infer_mc_samples", type=int, default=0, help="0 = evaluate the posterior mean")
    g.add_argument("--ivon_clip_radius", type=float, default=1e-3,
                   help='IVON clips each element of its preconditioned step to ±this (> 0)')

    g = p.add_argument_group("custom LR schedule (values are absolute learning rates)")
    g.add_argument("--use_custom_lr_schedule", action="store_true",
                   help="the paper's schedule: warm-up to --lr_schedule_first_lr, constant, then a drop to --lr_schedule_second_lr decaying linearly to --lr_schedule_end_lr")
    g.add_argument("--lr_schedule_first_lr", type=float, default=2.0,
                   help='learning rate of the warm-up target and the constant phase')
    g.add_argument("--lr_schedule_const_epochs", type=float, default=None,
                   help="epochs of the constant first-lr phase (default 1); a value above 100 is a step count, "
                        "as in the paper's scripts")
    g.add_argument("--lr_schedule_const_steps", type=int, default=None,
                   help="the constant phase ends at this update (instead of --lr_schedule_const_epochs)")
    g.add_argument("--lr_schedule_second_lr", type=float, default=0.2,
                   help='learning rate right after the constant phase')
    g.add_argument("--lr_schedule_end_lr", type=float, default=0.0,
                   help='learning rate at the last update')
    return p.parse_args(argv)


def _valid_criteria() -> tuple[str, ...]:
    try:
        from peft.importance import CRITERIA
        return tuple(CRITERIA)
    except ImportError:
        return _FALLBACK_CRITERIA


def validate_args(args: argparse.Namespace) -> None:
    """Reject impossible flag combinations before anything is loaded or written (raises UsageError)."""
    if args.task_name is None and args.train_file is None:
        raise UsageError(f"give --task_name (one of {', '.join(TASKS)}) or --train_file/--validation_file")
    if args.glue_dir is not None and (args.train_file is not None or args.validation_file is not None):
        # Refused rather than picking one: either choice would silently train on data the user did not mean.
        raise UsageError("give --glue_dir or --train_file/--validation_file, not both (the files would replace "
                         "the GLUE data)")
    if args.task_name is None and args.glue_dir is not None:
        raise UsageError("--glue_dir needs --task_name")
    if args.output_dir is None:
        raise UsageError("--output_dir is required")
    if not args.output_dir.strip():  # Path("") is the current directory
        raise UsageError("--output_dir is empty; give the folder for this run's outputs")
    out = Path(args.output_dir)
    for p in (out, *out.parents):  # the nearest thing that exists must be a folder (broken links included)
        if os.path.lexists(p):
            if not p.is_dir():
                raise UsageError(f"--output_dir {out} exists and is not a directory" if p == out else
                                 f"--output_dir {out}: {p} is in the way (not a directory)")
            break
    if args.lora_type not in ("lora", "adalora", "vilora"):
        raise UsageError(f"unknown --lora_type {args.lora_type!r}; valid: lora, adalora, vilora")
    if args.lora_type != "lora" and not args.apply_lora:
        raise UsageError(f"--lora_type {args.lora_type} needs --apply_lora")
    if args.lora_path is not None and not args.apply_lora:
        raise UsageError("--lora_path needs --apply_lora")
    if args.vilora_criterion not in _valid_criteria():
        raise UsageError(f"unknown --vilora_criterion {args.vilora_criterion!r}; valid: {', '.join(_valid_criteria())}")
    if args.apply_lora and args.lora_type == "vilora":
        args.use_ivon = True  # VILoRA scores come from IVON's posterior
    positive = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "num_train_epochs", "max_length", "ivon_train_mc_samples"]
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ["eval_steps", "num_warmup_steps", "ivon_infer_mc_samples", "ivon_ess", "eval_after_epochs"]:
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be an integer from 0 to 2**32 - 1, got {args.seed}")
    if args.lr_schedule_const_steps is not None and args.lr_schedule_const_epochs is not None:
        raise UsageError("give --lr_schedule_const_steps or --lr_schedule_const_epochs, not both")
    if args.lr_schedule_const_steps is not None and args.lr_schedule_const_steps < 0:
        raise UsageError(f"--lr_schedule_const_steps must be >= 0, got {args.lr_schedule_const_steps}")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise UsageError(f"--max_train_steps must be >= 1, got {args.max_train_steps}")
    if args.fp16:
        args.mixed_precision = "fp16"
    if args.use_ivon and args.mixed_precision == "fp16":
        raise UsageError("--fp16 cannot be used with IVON: IVON reads gradients before fp16 loss-scale "
                         "unscaling; use --mixed_precision bf16 or no")
    if args.glue_dir is not None and not Path(args.glue_dir).is_dir():
        raise UsageError(f"--glue_dir {args.glue_dir} is not a directory")
    for flag in ("train_file", "validation_file"):
        path = getattr(args, flag)
        if path is not None and not (path.endswith((".csv", ".json", ".jsonl")) and Path(path).is_file()):
            raise UsageError(f"--{flag} {path} must be an existing .csv or .json(l) file")
    if args.lora_path is not None and not (Path(args.lora_path) / "adapter_config.json").is_file():
        raise UsageError(f"--lora_path {args.lora_path} holds no adapter_config.json")
    if args.with_tracking:
        if args.report_to != "all" and not _importable(args.report_to):
            raise UsageError(f"--report_to {args.report_to} needs the '{args.report_to}' package, which is not "
                             "installed; install it or drop --with_tracking")
        if args.report_to == "all" and not (_importable("tensorboard") or _importable("wandb")):
            raise UsageError("--with_tracking needs tensorboard or wandb installed (neither is); "
                             "install one or drop --with_tracking")
    if args.resume_from_checkpoint not in (None, "latest") and not Path(args.resume_from_checkpoint).is_dir():
        raise UsageError(f"--resume_from_checkpoint {args.resume_from_checkpoint} is not a directory")
    # What the output folder holds is checked under its lock, by _claim_output_dir.


def check_settings(args: argparse.Namespace) -> None:
    """Check every number and setting the libraries will be given, by the libraries' own rules, before any
    data or model is loaded: the adapter config (peft: ranks, alpha, dropout, criterion, orth weight), IVON's
    hyperparameters (ivon), AdamW's learning rate and weight decay (torch), and every learning rate the custom
    schedule will set (by the optimizer's rule). NaN and inf are refused wherever a number is taken."""
    odd = [k for k, v in vars(args).items() if isinstance(v, float) and not math.isfinite(v)]
    if odd:
        raise UsageError(f"--{odd[0]} must be a finite number, got {getattr(args, odd[0])}")
    if args.apply_lora and args.lora_path is None:
        try:
            adapter_config(args)
        except ValueError as e:
            raise UsageError(f"adapter settings: {e}") from None
    lrs = {"lr_schedule_first_lr": args.lr_schedule_first_lr, "lr_schedule_second_lr": args.lr_schedule_second_lr,
           "lr_schedule_end_lr": args.lr_schedule_end_lr} if args.use_custom_lr_schedule else \
        {"learning_rate": args.learning_rate}
    if args.use_ivon or (args.apply_lora and args.lora_type == "vilora"):
        import ivon
        hyper = dict(hess_init=args.ivon_hess_init, beta1=args.ivon_beta1, beta2=args.ivon_beta2,
                     weight_decay=args.ivon_weight_decay, mc_samples=args.ivon_train_mc_samples,
                     clip_radius=args.ivon_clip_radius) | ({"ess": args.ivon_ess} if args.ivon_ess else {})
        try:
            ivon.check_hyperparameters(**hyper)
            for flag, lr in lrs.items():
                try:
                    ivon.check_hyperparameters(lr=lr)
                except ValueError as e:
                    raise ValueError(f"--{flag}: {e}") from None
        except ValueError as e:
            raise UsageError(str(e)) from None
        return
    probe = [torch.nn.Parameter(torch.zeros(1))]
    for flag, lr in lrs.items():
        try:
            torch.optim.AdamW(probe, lr=lr, weight_decay=args.weight_decay)
        except ValueError as e:
            raise UsageError(f"AdamW: --{flag} {lr:g} / --weight_decay {args.weight_decay:g}: {e}") from None


def _importable(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------------------------- data
# One GLUE row is a sentence or two (the longest line of the GLUE download is under 2 KB): a longer line is not
# GLUE data, and stopping there keeps a file without line breaks from being read into memory whole.
MAX_TSV_LINE_BYTES = 1 << 20


def _utf8_lines(path: Path, max_bytes: int | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number from 1, text without its line break) of a UTF-8 file; a leading BOM is dropped.

    Raises UsageError naming file and line for bytes that are not UTF-8 and, with `max_bytes`, for a line
    longer than that (read no further than the limit).
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for line_no in range(1, sys.maxsize):
            line = f.readline(max_bytes + 2) if max_bytes else f.readline()  # + 2: room for "\r\n"
            if not line:
                return
            line = line.rstrip(b"\r\n")
            if max_bytes and len(line) > max_bytes:
                raise UsageError(f"{path}:{line_no}: line longer than {max_bytes // 2**20} MiB; one row of a GLUE "
                                 "file is a sentence or two")
            try:
                yield line_no, line.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(f"{path}:{line_no}: byte 0x{line[e.start]:02x} at column {e.start + 1} is not "
                                 "valid UTF-8; the file must be UTF-8 text") from None


def read_glue_tsv(path: Path, task: str) -> dict[str, list]:
    """Read one GLUE .tsv file into columns of the Hub schema (text columns, ``label``, ``idx``).

    A row is one line split at tabs, with no quoting (GLUE text contains unbalanced quotes). Lines must be
    UTF-8 (the BOM that MRPC's header carries is dropped) and at most MAX_TSV_LINE_BYTES (1 MiB) long. Labels
    are mapped to the Hub's ClassLabel ids. Any malformed line raises UsageError naming the file and line.
    """
    has_header, text_cols, label_col = GLUE_TSV[task]
    names = LABEL_NAMES[task]
    # Files spell classes either by name (rte, qnli, mnli) or by id (0/1); both map to the Hub's id.
    to_id = {n: i for i, n in enumerate(names)} | {str(i): i for i in range(len(names))} if names else None
    if not path.is_file():
        raise UsageError(f"GLUE file not found: {path} (expected the GLUE layout <glue_dir>/{GLUE_FOLDER[task]}/"
                         f"{path.name})")
    columns: dict[str, list] = {c: [] for c in text_cols} | {"label": [], "idx": []}
    width = None
    for line_no, text in _utf8_lines(path, MAX_TSV_LINE_BYTES):
        row = text.split("\t") if text else []
        if has_header and line_no == 1:
            width = len(row)
            continue
        if width is None:
            width = max(max(text_cols.values()), label_col) + 1
        if len(row) != width:
            raise UsageError(f"{path}:{line_no}: expected {width} tab-separated columns, found {len(row)}")
        raw = row[label_col].strip()
        if to_id is None:
            try:
                label = float(raw)
            except ValueError:
                label = math.nan
            if not 0.0 <= label <= 5.0:  # also rejects NaN
                raise UsageError(f"{path}:{line_no}: label {raw!r} is not an stsb score (a number from 0 to 5)")
        elif raw in to_id:
            label = to_id[raw]
        else:
            valid = ", ".join(names) if not raw.isdigit() else ", ".join(map(str, range(len(names))))
            raise UsageError(f"{path}:{line_no}: label {raw!r} is not a {task} label; valid: {valid}")
        for col, i in text_cols.items():
            columns[col].append(row[i])
        columns["label"].append(label)
        columns["idx"].append(len(columns["idx"]))
    if not columns["idx"]:
        raise UsageError(f"{path}: no data rows")
    return columns


def glue_features(task: str) -> datasets.Features:
    """The Hub `nyu-mll/glue` schema of one task: text columns, label (ClassLabel or float32), idx."""
    feats = {c: datasets.Value("string") for c in GLUE_TSV[task][1]}
    names = LABEL_NAMES[task]
    feats["label"] = datasets.ClassLabel(names=names) if names else datasets.Value("float32")
    feats["idx"] = datasets.Value("int32")
    return datasets.Features(feats)


def glue_split_names(task: str, with_train: bool = True) -> list[str]:
    """Splits a run needs: train (unless evaluating only) and the dev split(s); MNLI has two dev sets."""
    dev = ["validation_matched", "validation_mismatched"] if task == "mnli" else ["validation"]
    return (["train"] if with_train else []) + dev


CUSTOM_FILE_FLAGS = {"train": "train_file", "validation": "validation_file"}


def _where(args: argparse.Namespace, split: str) -> str:
    """How messages name a split's source: the flag and file for custom data, else the task's split."""
    flag = CUSTOM_FILE_FLAGS.get(split)
    if flag is not None and getattr(args, flag) is not None:
        return f"--{flag} {getattr(args, flag)}"
    return f"the {args.task_name} {split} split"


def _first_missing(ds: datasets.Dataset, column: str) -> int | None:
    """Index of the first row whose value is missing (null, NaN or blank text), or None when all are there."""
    for i, v in enumerate(ds[column]):
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
            return i
    return None


def _loader_reason(e: BaseException) -> str:
    """One line from a loader's exception: datasets wraps the pandas/pyarrow error that says what is wrong."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


@contextlib.contextmanager
def _quiet_datasets():
    """Silence datasets' progress bars and logging (a failed json parse logs its own error) for a file read."""
    level, bars_off = datasets.utils.logging.get_verbosity(), datasets.utils.are_progress_bars_disabled()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        datasets.utils.logging.set_verbosity(level)
        if not bars_off:
            datasets.utils.enable_progress_bars()


def load_custom_files(args: argparse.Namespace) -> dict[str, datasets.Dataset]:
    """Read --train_file/--validation_file: csv with a header row, or json (a list of records or json lines),
    each file in the format of its own extension.

    Each file must be UTF-8 and readable, hold at least one row and a ``label`` column with a value in every
    row; text columns are checked by `text_columns`, the kind of labels by `label_setup`. Raises UsageError
    naming the file (and line or data row, counted from 1 without the csv header) otherwise.
    """
    files = {s: getattr(args, f) for s, f in CUSTOM_FILE_FLAGS.items() if getattr(args, f) is not None}
    if "validation" not in files or ("train" not in files and not args.eval_only):
        raise UsageError("give both --train_file and --validation_file (or --validation_file with --eval_only)")
    raw = {}
    for split, path in files.items():
        where, fmt = _where(args, split), "csv" if path.endswith(".csv") else "json"
        blank = True
        for _, text in _utf8_lines(Path(path)):  # the loaders' decode errors name neither line nor file
            blank = blank and not text.strip()
        if blank:
            raise UsageError(f"{where} is empty; it needs a header row and data rows (csv) or records (json)")
        try:
            with _quiet_datasets():
                ds = datasets.load_dataset(fmt, data_files={split: path}, split=split)
        except Exception as e:  # pandas, pyarrow and datasets errors alike: the file is not what it claims
            if "corresponds to no data" in str(e):  # datasets' words for a file without rows
                raise UsageError(f"{where} has no data rows") from None
            raise UsageError(f"{where} cannot be read as {fmt}: {_loader_reason(e)}") from None
        if ds.num_rows == 0:
            raise UsageError(f"{where} has no data rows")
        if "label" not in ds.column_names:
            raise UsageError(f"{where} has no 'label' column (columns: {', '.join(ds.column_names)}); custom data "
                             "needs one: class names or ids, or numbers for regression")
        row = _first_missing(ds, "label")
        if row is not None:
            raise UsageError(f"{where}: data row {row + 1} has no label; every row needs one")
        raw[split] = ds
    text_columns(args, raw)  # now, before the model is loaded
    return raw


def load_glue(args: argparse.Namespace) -> dict[str, datasets.Dataset]:
    """Load the run's splits as datasets in the Hub schema: from --glue_dir, the Hub, or --train_file."""
    if args.train_file is not None or args.validation_file is not None:  # a task picks the metric and labels
        return load_custom_files(args)
    task, splits = args.task_name, glue_split_names(args.task_name, with_train=not args.eval_only)
    if args.glue_dir is not None:
        folder = Path(args.glue_dir) / GLUE_FOLDER[task]
        return {s: datasets.Dataset.from_dict(read_glue_tsv(folder / GLUE_SPLIT_FILES[s], task),
                                              features=glue_features(task)) for s in splits}
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    try:
        return {s: datasets.load_dataset(HUB_DATASET, task, split=s) for s in splits}
    except Exception as e:  # no network, offline mode, no cache: all end the same way for the user
        why = "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set" if offline else type(e).__name__
        raise UsageError(f"cannot load {HUB_DATASET}/{task} from the Hub ({why}); pass --glue_dir DIR with a "
                         f"local GLUE copy (DIR/{GLUE_FOLDER[task]}/train.tsv, dev.tsv)") from None


def _label_kind(args: argparse.Namespace, split: str, ds: datasets.Dataset) -> str:
    """What a custom split's labels are: 'integer', 'number' (float), 'text' or 'bool'; UsageError otherwise."""
    feature = ds.features["label"]
    dtype = feature.dtype if isinstance(feature, datasets.Value) else ""
    for kind, dtypes in (("integer", ("int", "uint")), ("number", ("float",)), ("text", ("string", "large_string")),
                         ("bool", ("bool",))):
        if dtype.startswith(dtypes):
            return kind
    types = sorted({type(v).__name__ for v in ds["label"]})  # e.g. datasets' Json feature for json mixing types
    what = f"mixes {' and '.join(types)} values" if len(types) > 1 else f"holds {types[0]} values"
    raise UsageError(f"{_where(args, split)}: the label column {what}; valid: one class name, integer class id "
                     "or number (regression) per row, of one kind in the whole file")


def _warn(message: str) -> None:
    if _is_main_launch():  # every process checks the data; one says so
        print(f"run_glue_no_trainer.py: warning: {message}", file=sys.stderr)


def label_setup(args: argparse.Namespace, raw: dict[str, datasets.Dataset]):
    """Return (is_regression, label_names or None, label_to_id or None) for the run's data.

    GLUE data (--glue_dir or the Hub) is in the Hub schema, its labels already class ids. For custom files
    --task_name decides: stsb is regression on numbers, any other task takes its class names or ids 0..n-1.
    Without a task, float labels in the first file (train, else validation) mean regression, and integers,
    strings or booleans mean classes named by the sorted distinct values of all files. Whole-number scores
    of a regression split are cast to float32 in `raw`.

    Refused (UsageError): labels that do not fit that decision (text for regression, decimal numbers for
    classes, integer ids in one file and names in the other), infinite scores, and training data of a single
    class (nothing to learn). Only warned about on stderr, training runs: a validation class that never
    occurs in training, because a small or skewed sample can honestly lack a rare class; the model cannot
    learn it, so those rows count as errors.
    """
    if args.train_file is None and args.validation_file is None:
        names = LABEL_NAMES[args.task_name]
        return names is None, names, None  # Hub schema: labels are already class ids
    task, first = args.task_name, next(iter(raw))
    kinds = {s: _label_kind(args, s, ds) for s, ds in raw.items()}
    if task is not None:
        regression = LABEL_NAMES[task] is None
        why = f"{task} is a regression task" if regression else f"{task} is a classification task"
    else:
        regression = kinds[first] == "number"
        why = f"the float labels of {_where(args, first)} make this a regression task"
    if regression:
        for s, ds in raw.items():
            if kinds[s] not in ("integer", "number"):
                raise UsageError(f"{_where(args, s)}: label {ds[0]['label']!r} is not a number, but {why}")
            bad = next((v for v in ds.unique("label") if not math.isfinite(v)), None)
            if bad is not None:
                raise UsageError(f"{_where(args, s)}: label {bad} is not a finite number")
            if kinds[s] == "integer":
                raw[s] = ds.cast_column("label", datasets.Value("float32"))
        return True, None, None
    names = LABEL_NAMES[task] if task is not None else None
    valid = f"; valid: {', '.join(names)} or 0-{len(names) - 1}" if names else ""
    for s, ds in raw.items():
        if kinds[s] == "number":
            example = next((v for v in ds.unique("label") if not float(v).is_integer()), ds[0]["label"])
            raise UsageError(f"{_where(args, s)}: label {example!r} is a decimal number, but " +
                             (f"{why}{valid}" if task else f"the labels of {_where(args, first)} are classes "
                              f"({kinds[first]}); use class labels of one kind in every file"))
        if task is None and kinds[s] != kinds[first]:
            raise UsageError(f"{_where(args, s)} has {kinds[s]} labels but {_where(args, first)} has "
                             f"{kinds[first]} labels; use one kind of class label in every file")
    if names is not None:
        to_id = {n: i for i, n in enumerate(names)} | {i: i for i in range(len(names))} | \
            {str(i): i for i in range(len(names))}
        for s, ds in raw.items():
            bad = [v for v in ds.unique("label") if v not in to_id]
            if bad:
                raise UsageError(f"{_where(args, s)}: label {bad[0]!r} is not a {task} label{valid}")
    else:
        values = sorted({v for ds in raw.values() for v in ds.unique("label")})
        names, to_id = [str(v) for v in values], {v: i for i, v in enumerate(values)}
    if "train" in raw and not args.eval_only:
        seen = {to_id[v] for v in raw["train"].unique("label")}
        if len(seen) < 2:
            raise UsageError(f"{_where(args, 'train')}: every label is {names[seen.pop()]!r}; classification "
                             "needs at least two classes in the training data")
        for s, ds in raw.items():
            unseen = sorted({to_id[v] for v in ds.unique("label")} - seen)
            if unseen:
                labels = ", ".join(repr(names[i]) for i in unseen)
                _warn(f"label{'s' if len(unseen) > 1 else ''} {labels} of {_where(args, s)} never "
                      f"occur{'' if len(unseen) > 1 else 's'} in {_where(args, 'train')}; the model cannot learn "
                      f"{'them' if len(unseen) > 1 else 'it'} and those rows count as errors")
    return False, names, to_id


def _is_text(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def text_columns(args: argparse.Namespace, raw: dict[str, datasets.Dataset]) -> tuple[str, str | None]:
    """The one or two columns to tokenize: the task's (TASK_TO_KEYS); for custom data without a task,
    sentence1 and sentence2 when present, else the first one or two text columns besides label and idx.

    Every split must hold them as text, and custom data a value in every row (else UsageError naming the file).
    """
    first = next(iter(raw))
    cols = [c for c in raw[first].column_names if c not in ("label", "idx")]
    if args.task_name:
        keys = TASK_TO_KEYS[args.task_name]
    elif {"sentence1", "sentence2"} <= set(cols):
        keys = ("sentence1", "sentence2")
    else:
        texts = [c for c in cols if _is_text(raw[first].features[c])]
        if not texts:
            raise UsageError(f"{_where(args, first)} has no text column (columns: "
                             f"{', '.join(raw[first].column_names)}); custom data needs one or two columns of text "
                             "besides 'label'")
        keys = (texts[0], texts[1] if len(texts) > 1 else None)
    needed = [k for k in keys if k is not None]
    custom = args.train_file is not None or args.validation_file is not None
    for split, ds in raw.items():
        where = _where(args, split)
        for key in needed:
            if key not in ds.column_names:
                raise UsageError(f"{where} has no column {key!r} (columns: {', '.join(ds.column_names)}); "
                                 f"{args.task_name or 'this'} data needs {' and '.join(needed)}")
            if not _is_text(ds.features[key]):
                dtype = getattr(ds.features[key], "dtype", type(ds.features[key]).__name__)
                raise UsageError(f"{where}: column {key!r} holds {dtype} values, not text")
            row = next((i for i, v in enumerate(ds[key]) if v is None), None) if custom else None
            if row is not None:  # blank text is fine for a tokenizer, a missing value is not
                raise UsageError(f"{where}: data row {row + 1} has no text in column {key!r}; every row needs one")
    return keys


def tokenize_splits(args, raw, tokenizer, label_to_id) -> dict[str, datasets.Dataset]:
    """Tokenize every split; the label column becomes ``labels`` (class id or float score)."""
    key1, key2 = text_columns(args, raw)

    def encode(batch):
        texts = (batch[key1],) if key2 is None else (batch[key1], batch[key2])
        enc = tokenizer(*texts, padding="max_length" if args.pad_to_max_length else False,
                        max_length=args.max_length, truncation=True)
        enc["labels"] = [label_to_id[v] for v in batch["label"]] if label_to_id else batch["label"]
        return enc

    return {name: ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {name}")
            for name, ds in raw.items()}


def epoch_batches(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches of example indices for one epoch.

    The order comes from a private generator whose seed mixes (seed, epoch) through numpy's SeedSequence, so
    every (seed, epoch) pair has its own order: seed 2021's epoch 1 is not seed 2022's epoch 0, as it was
    with `seed + epoch`. It does not depend on the global RNG, so a resumed run sees the same batches and can
    skip the ones it already consumed.
    """
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32).view(np.uint64)[0])
    order = torch.randperm(n_examples, generator=torch.Generator().manual_seed(mixed)).tolist()
    return [order[i:i + batch_size] for i in range(0, n_examples, batch_size)]


def shard_batch(batch: list[int], rank: int, world: int) -> tuple[list[int], float]:
    """This process's part of a global batch, and the weight of its loss.

    Process r takes examples r, r + N, r + 2N, ... of the batch (N = world), so the N parts together are exactly
    the batch a single process would see. Each part's mean loss is weighted by w_r = N·n_r/n (n_r of the
    batch's n examples), so that the mean over processes of w_r·loss_r, which is what DDP's gradient average and
    IVON's `sync` compute, is the mean loss over the whole batch, also for a short last batch. A process that
    gets no example (a last batch smaller than N) runs one example with weight 0: it must still take part in
    the gradient all-reduce.
    """
    part = batch[rank::world]
    if not part:
        return batch[:1], 0.0
    return part, world * len(part) / len(batch)


def _loader(dataset, collator, batch_sampler=None, batch_size=None) -> DataLoader:
    # A private generator: iterating a DataLoader otherwise draws its base seed from the global RNG,
    # which would shift dropout/IVON noise between an interrupted and an uninterrupted run.
    sizing = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size}
    return DataLoader(dataset, collate_fn=collator, generator=torch.Generator().manual_seed(0), **sizing)


# ----------------------------------------------------------------------------------------------- schedules
def custom_lr_lambda(step: int, *, warmup_steps: int, const_end: float, total_steps: int,
                     first_lr: float, second_lr: float, end_lr: float) -> float:
    """The `_clr` schedule of the paper's fork; with the base lr forced to 1.0 it is the absolute lr.

    W = warmup_steps, C = const_end (an absolute step), N = total_steps:
    s < W:       first_lr * s / W
    W <= s < C:  first_lr
    s >= C:      max(second_lr - (second_lr - end_lr) * (s - C) / (N - C), end_lr)
    """
    if step < warmup_steps:
        return first_lr / warmup_steps * step
    if step < const_end:
        return first_lr
    return max(second_lr - (second_lr - end_lr) / (total_steps - const_end) * (step - const_end), end_lr)


def custom_schedule_const_end(args: argparse.Namespace, steps_per_epoch: int) -> float:
    """End C of the constant phase, an absolute update: --lr_schedule_const_steps, else
    --lr_schedule_const_epochs (default 1) x updates per epoch, where a value above 100 is already a step count
    (the paper's scripts give e.g. 400)."""
    if args.lr_schedule_const_steps is not None:
        return args.lr_schedule_const_steps
    epochs = 1.0 if args.lr_schedule_const_epochs is None else args.lr_schedule_const_epochs
    return epochs if epochs > 100 else epochs * steps_per_epoch


@dataclasses.dataclass
class StepPlan:
    """How many micro-batches and optimizer updates the run has."""
    batches_per_epoch: int
    updates_per_epoch: int
    max_train_steps: int
    num_epochs: int


def plan_steps(args: argparse.Namespace, n_train: int, num_processes: int = 1) -> StepPlan:
    """Count updates and check the schedules fit the run (AdaLoRA budget phases, custom LR phases).

    A batch is global: --per_device_train_batch_size x num_processes examples, split over the processes.
    """
    batches = math.ceil(n_train / (args.per_device_train_batch_size * num_processes))
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    total = args.max_train_steps or args.num_train_epochs * per_epoch
    plan = StepPlan(batches, per_epoch, total, math.ceil(total / per_epoch))
    if args.apply_lora and args.lora_type in ("adalora", "vilora") and args.lora_path is None:
        check_budget_schedule(adapter_config(args), total, "--adalora_tinit/--adalora_tfinal/--adalora_delta_t")
    if args.use_custom_lr_schedule:
        const_end = custom_schedule_const_end(args, per_epoch)
        if const_end >= total:
            flag = "--lr_schedule_const_steps" if args.lr_schedule_const_steps is not None else \
                "--lr_schedule_const_epochs"
            raise UsageError(f"custom LR schedule: the constant phase ends at step {const_end:g} ({flag}), not "
                             f"before the last step {total}; lower it or train longer")
    return plan


def check_budget_schedule(config, total_steps: int, source: str) -> None:
    """peft's rule for an AdaLoRA/VILoRA budget schedule of `total_steps` updates (a budgeting phase must fit
    between tinit and the final phase; tinit/tfinal >= 0, deltaT >= 1), as bad input naming `source`."""
    config = dataclasses.replace(config, total_step=total_steps)
    try:
        config.validate_schedule()
    except ValueError as e:
        raise UsageError(f"AdaLoRA schedule impossible ({source}): {e}") from None


def build_scheduler(args, optimizer, plan: StepPlan):
    """A transformers schedule by name, or the custom `_clr` LambdaLR (base lr already 1.0)."""
    if args.use_custom_lr_schedule:
        const_end = custom_schedule_const_end(args, plan.updates_per_epoch)
        lam = functools.partial(custom_lr_lambda, warmup_steps=args.num_warmup_steps, const_end=const_end,
                                total_steps=plan.max_train_steps, first_lr=args.lr_schedule_first_lr,
                                second_lr=args.lr_schedule_second_lr, end_lr=args.lr_schedule_end_lr)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lam)
    try:
        return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps,
                             num_training_steps=plan.max_train_steps,
                             scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--lr_scheduler_type {args.lr_scheduler_type}: {e} (give its arguments as "
                         "--lr_scheduler_kwargs '{\"name\": value}')") from None


# ----------------------------------------------------------------------------------------------- model
def adapter_config(args: argparse.Namespace):
    """The peft config for --lora_type, as the paper's fork builds it; AdaLoRA's total_step is set later."""
    import peft
    common = dict(task_type=peft.TaskType.SEQ_CLS, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout)
    modules = [m.strip() for m in args.lora_modules.split(",") if m.strip()] or None
    if args.lora_type == "lora":
        extra = {"r": args.lora_r} if args.lora_r is not None else {}
        return peft.LoraConfig(target_modules=modules, **common, **extra)
    ada = dict(target_r=args.adalora_target_r, init_r=args.adalora_init_r, tinit=args.adalora_tinit,
               tfinal=args.adalora_tfinal, deltaT=args.adalora_delta_t, orth_reg_weight=args.adalora_orth_reg_weight)
    if modules:
        ada["target_modules"] = modules
    if args.lora_type == "adalora":
        return peft.AdaLoraConfig(**common, **ada)
    return peft.VILoraConfig(**common, **ada, criterion=args.vilora_criterion)


# Build every model in float32, as transformers 4.x always did. Since transformers 5, from_pretrained keeps a
# checkpoint's stored dtype (the Hub's deberta-v3-base is float16), which would train float16 weights and
# give IVON mixed dtypes. Mixed precision is accelerate's job (--mixed_precision). The keyword was renamed
# from torch_dtype to dtype in transformers 4.56.
FLOAT32 = {"dtype" if tuple(map(int, transformers.__version__.split(".")[:2])) >= (4, 56) else "torch_dtype":
           torch.float32}


def build_model(args, num_labels: int, label_names: list[str] | None):
    """Tokenizer and classifier; wrapped with the adapter when --apply_lora (optionally loaded from --lora_path)."""
    try:
        config = AutoConfig.from_pretrained(args.model_name_or_path, num_labels=num_labels,
                                            finetuning_task=args.task_name, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UsageError(f"--model_name_or_path {args.model_name_or_path}: cannot load its config ({first})") from None
    positions = getattr(config, "max_position_embeddings", None)
    if positions and getattr(config, "position_biased_input", True) and args.max_length > positions:
        raise UsageError(f"--max_length {args.max_length} exceeds the {positions} positions of "
                         f"{args.model_name_or_path}; use --max_length {positions} or less")
    if label_names:
        config.label2id = {n: i for i, n in enumerate(label_names)}
        config.id2label = dict(enumerate(label_names))
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, use_fast=not args.use_slow_tokenizer,
                                              trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers: pad with the end-of-text token, as the original did
        if tokenizer.eos_token is None:
            raise UsageError(f"the tokenizer of {args.model_name_or_path} has neither a pad nor an eos token; "
                             "batches cannot be padded")
        tokenizer.pad_token = tokenizer.eos_token
        config.pad_token_id = tokenizer.pad_token_id
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model_name_or_path, config=config, ignore_mismatched_sizes=args.ignore_mismatched_sizes,
            trust_remote_code=args.trust_remote_code, **FLOAT32)
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):
            raise
        raise UsageError(f"{args.model_name_or_path} has weights (e.g. a classifier head) of other shapes than "
                         f"this task needs ({num_labels} labels); pass --ignore_mismatched_sizes to re-initialise "
                         "them") from None
    if args.gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise UsageError(f"--gradient_checkpointing: model type {config.model_type} does not support it")
        # Non-reentrant checkpointing also works when the inputs (frozen embeddings under LoRA) need no grad.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not args.apply_lora:
        return model, tokenizer
    import peft
    if args.lora_path is None:
        try:
            return peft.get_peft_model(model, adapter_config(args)), tokenizer
        except ValueError as e:  # e.g. target modules that match nothing
            raise UsageError(f"adapter: {e}") from None
    try:
        saved = peft.PeftConfig.from_pretrained(args.lora_path)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise UsageError(f"--lora_path {args.lora_path}: adapter_config.json is not a valid adapter config "
                         f"({type(e).__name__}: {str(e)[:300]})") from None
    # Trainable even for --eval_only: IVON's predictive evaluation samples the trainable parameters.
    saved.inference_mode = False
    try:
        model = peft.get_peft_model(model, saved)
        model.load_adapter(args.lora_path, "default", is_trainable=True)
    except Exception as e:  # missing, empty or truncated weights, or weights of another model
        raise UsageError(f"--lora_path {args.lora_path}: cannot load the adapter onto {args.model_name_or_path} "
                         f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]})") from None
    return model, tokenizer


def lora_kind(model) -> str:
    """'full', 'lora', 'adalora' or 'vilora' for the (possibly loaded) model."""
    cfg = getattr(model, "peft_config", {}).get("default")
    if cfg is None:
        return "full"
    if getattr(cfg, "criterion", None) is not None:
        return "vilora"
    return "adalora" if hasattr(cfg, "init_r") else "lora"


def build_optimizer(args, model, n_train: int, device: torch.device, sync: bool = False):
    """IVON over the trainable params (one group, model order) or AdamW with the usual no-decay group.

    `sync` (several processes): IVON averages its gradient statistics over the processes in step(), see train().
    """
    lr = 1.0 if args.use_custom_lr_schedule else args.learning_rate  # custom schedule values are absolute lrs
    if args.use_ivon:
        import ivon
        params = [p for p in model.parameters() if p.requires_grad]
        try:
            return ivon.IVON(params, lr=lr, ess=args.ivon_ess or n_train, hess_init=args.ivon_hess_init,
                             beta1=args.ivon_beta1, beta2=args.ivon_beta2, weight_decay=args.ivon_weight_decay,
                             mc_samples=args.ivon_train_mc_samples, clip_radius=args.ivon_clip_radius, device=device,
                             sync=sync)
        except ValueError as e:
            raise UsageError(str(e) if str(e).startswith("IVON") else f"IVON: {e}") from None
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "bias" in name or "LayerNorm.weight" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


# ----------------------------------------------------------------------------------------------- run state
@dataclasses.dataclass
class TrainState:
    """Everything about the position in training that a checkpoint must restore (JSON-serialisable)."""
    seed: int
    completed_steps: int = 0
    epoch: int = 0
    batches_done: int = 0           # micro-batches consumed in `epoch`
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    best_eval: dict = dataclasses.field(default_factory=dict)
    last_eval: dict = dataclasses.field(default_factory=dict)
    last_eval_step: int | None = None
    log_lines: int = 0
    train_runtime_s: float = 0.0
    train_batch_size: int | None = None  # global batch (per device x processes); None in older checkpoints


@dataclasses.dataclass
class Run:
    """The objects one run works with, passed as one value to train/evaluate/save."""
    args: argparse.Namespace
    accelerator: Accelerator
    model: torch.nn.Module
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    ivon: Any                       # the raw IVON optimizer, or None
    kind: str                       # full | lora | adalora | vilora
    train_dataset: datasets.Dataset | None
    eval_loaders: dict[str, DataLoader]
    collator: Callable
    plan: StepPlan | None
    metric: Any
    metric_task: str
    is_regression: bool
    out: Path
    n_eval: int = 0                 # dev examples the last evaluation scored (gathered over processes)
    start_means: torch.Tensor | None = None  # IVON: the means this run started from (posterior_stats)
    resume_rng: dict | None = None  # RNG states read from the checkpoint resumed, set last (restore_rng)
    hub_repo: str | None = None     # --push_to_hub: the repository, created before training

    @property
    def peft_model(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def adaptive(self) -> bool:
        return self.kind in ("adalora", "vilora")


class JsonlLog:
    """Appends one JSON object per line to OUT/log.jsonl (flushed, so a killed run keeps what it logged).

    Only the main process writes (`enabled`); the others count lines too, so that every process holds the
    same TrainState.
    """

    def __init__(self, path: Path, state: TrainState, enabled: bool = True):
        self.path, self.state, self.enabled = path, state, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self.state.log_lines += 1


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:  # a full disk: leave no temp file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class _FullWriter:
    """A file for torch.save whose write() writes every byte or raises OSError, and remembers that error: torch.save
    reports a failed write (a full disk, a file size limit) only as an obscure 'unexpected pos' RuntimeError."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path, self.error = fd, path, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            self.error = self.error or OSError(e.errno, e.strerror, str(self.path))
            raise self.error from None
        return n

    def flush(self) -> None:
        pass


def _save_file(path: Path, obj: Any, fsync: bool = False) -> None:
    """Write `obj` to `path`: bytes as they are, anything else with torch.save; with `fsync`, on disk on return
    (a checkpoint's completion marker may only vouch for what is on disk). A failed write is an OSError."""
    with open(path, "wb", buffering=0) as f:
        writer = _FullWriter(f.fileno(), path)
        if isinstance(obj, bytes):
            writer.write(obj)
        else:
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
        if fsync:
            os.fsync(f.fileno())


def _torch_save_atomic(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        _save_file(Path(tmp), obj)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------- training
def forward_backward(run: Run, batch: dict, group_size: int, weight: float = 1.0, sync: bool = True) -> float:
    """Loss and gradient of one micro-batch; under IVON each of the mc samples runs at perturbed weights.

    The loss is divided by the number of micro-batches in this accumulation group (`group_size`, smaller than
    --gradient_accumulation_steps only for the last group of an epoch), so every update sees a mean gradient.
    As in the paper's script, grads are *not* zeroed between IVON samples or micro-batches: IVON records
    p.grad when each sample ends, so with mc > 1 or gas > 1 the k-th recorded sample holds the running sum of
    the first k gradients (the paper always used mc = gas = 1, where this makes no difference).

    Several processes: the loss is multiplied by this process's `weight` (see `shard_batch`), and with
    `sync=False` DDP does not all-reduce the gradient (micro-batches before an accumulation boundary; every
    IVON micro-batch, since IVON averages its own statistics in step()). Returns the mean loss over the whole
    global batch, the same number on every process; a non-finite loss on any process stops all of them.
    """
    acc = run.accelerator
    world = acc.num_processes
    samples = run.args.ivon_train_mc_samples if run.ivon is not None else 1
    sample_ctx = (lambda: run.ivon.sampled_params(train=True)) if run.ivon is not None else contextlib.nullcontext
    grad_sync_ctx = contextlib.nullcontext() if sync else acc.no_sync(run.model)
    total = 0.0
    with grad_sync_ctx:
        for _ in range(samples):
            with sample_ctx():
                loss = run.model(**batch).loss
                if world > 1:
                    loss = loss * weight
                    # sum over processes of w_r·loss_r/N = the global batch's mean loss; NaN/inf anywhere shows
                    shown = loss.detach().float() / world if weight > 0 else torch.zeros((), device=loss.device)
                    torch.distributed.all_reduce(shown)
                    value = shown.item()
                else:
                    value = loss.item()
                if not math.isfinite(value):
                    raise TrainingError(f"non-finite training loss ({value})")
                acc.backward(loss / group_size)
            total += value
    return total / samples


def average_gradients(run: Run) -> None:
    """Average the trainable parameters' .grad over the processes (one flat all-reduce).

    Under IVON every process backpropagates its own posterior sample without DDP's all-reduce, so p.grad
    differs between processes. AdaLoRA's sensitivity score reads p.grad, and the allocator must decide the
    same masks everywhere: averaging first makes the score the one of the whole global batch (posterior
    criteria read only IVON's state, which `sync` already keeps identical).
    """
    grads = [p.grad for p in run.peft_model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat.div_(run.accelerator.num_processes)
    torch._foreach_copy_(grads, [v.view_as(g) for v, g in zip(flat.split([g.numel() for g in grads]), grads)])


def optimizer_update(run: Run, state: TrainState) -> float:
    """One update in the paper's order: step, scheduler, rank allocation (sees the grads), zero_grad."""
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    if run.args.lr_scheduler_type not in METRIC_SCHEDULERS or run.args.use_custom_lr_schedule:
        if not getattr(run.optimizer, "step_was_skipped", False):  # fp16: an overflow skips the step
            run.scheduler.step()
    if run.adaptive:
        criterion = getattr(run.peft_model.peft_config["default"], "criterion", None) or "sensitivity"
        if run.ivon is not None and run.accelerator.num_processes > 1 and criterion == "sensitivity":
            average_gradients(run)
        run.peft_model.base_model.update_and_allocate(state.completed_steps)
    run.optimizer.zero_grad(set_to_none=True)
    state.completed_steps += 1
    return lr


def train(run: Run, state: TrainState, log: JsonlLog) -> None:
    """The training loop, shared by AdamW and IVON, resumable at any update boundary."""
    bar = tqdm(total=run.plan.max_train_steps, initial=state.completed_steps, desc="train",
               disable=not run.accelerator.is_local_main_process)
    try:
        _train_epochs(run, state, log, bar)
    finally:
        bar.close()  # before any error message, so that it is the last line on stderr


def _train_epochs(run: Run, state: TrainState, log: JsonlLog, bar: tqdm) -> None:
    """Epochs from the state's position: update after every `gas` micro-batches and at an epoch's end, then
    log, maybe evaluate, maybe checkpoint; evaluate at each epoch's end."""
    args, plan = run.args, run.plan
    gas, n_batches = args.gradient_accumulation_steps, plan.batches_per_epoch
    step_sleep = float(os.environ.get("RUN_GLUE_DEBUG_STEP_SLEEP", "0"))  # lets tests kill a run mid-way
    started = time.time() - state.train_runtime_s
    group_losses: list[float] = []
    acc = run.accelerator
    for epoch in range(state.epoch, plan.num_epochs):
        run.model.train()
        # Global batches, the same on every process; each process trains on its shard of each.
        batches = epoch_batches(len(run.train_dataset), args.per_device_train_batch_size * acc.num_processes,
                                state.seed, epoch)
        shards = [shard_batch(b, acc.process_index, acc.num_processes) for b in batches]
        loader = _loader(run.train_dataset, run.collator, batch_sampler=[idx for idx, _ in shards[state.batches_done:]])
        for i, batch in enumerate(loader, start=state.batches_done):
            if state.completed_steps >= plan.max_train_steps:  # resumed from the final checkpoint
                break
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            group_start = i - i % gas
            # DDP all-reduces gradients only at the accumulation boundary; IVON never (it syncs in step()).
            boundary = (i + 1) % gas == 0 or i + 1 == n_batches
            try:
                loss = forward_backward(run, batch, min(gas, n_batches - group_start), weight=shards[i][1],
                                        sync=boundary and run.ivon is None)
            except TrainingError as e:
                last = _checkpoints(run.out)
                raise TrainingError(f"{e} at update {state.completed_steps + 1} (epoch {epoch}, batch {i}); "
                                    f"stopping. Last checkpoint: {last[-1] if last else 'none'}") from None
            group_losses.append(loss)
            state.epoch_loss_sum += loss
            state.epoch_loss_count += 1
            state.batches_done = i + 1
            if state.batches_done % gas != 0 and state.batches_done != n_batches:
                continue
            lr = optimizer_update(run, state)
            record = {"step": state.completed_steps, "epoch": epoch + state.batches_done / n_batches,
                      "train_loss": sum(group_losses) / len(group_losses), "lr": lr} | \
                _model_stats(run, hessian=state.completed_steps % HESS_LOG_EVERY == 0)
            group_losses = []
            log.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", lr=f"{lr:.3g}")
            if args.with_tracking:
                run.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=state.completed_steps)
            if step_sleep:
                time.sleep(step_sleep)
            if args.eval_steps and epoch >= args.eval_after_epochs and state.completed_steps % args.eval_steps == 0:
                run_eval(run, state, log, epoch + state.batches_done / n_batches)
            state.train_runtime_s = time.time() - started
            # After the eval: the checkpoint then holds the RNG state the next update starts from.
            if args.checkpointing_steps not in (None, "epoch") and \
                    state.completed_steps % int(args.checkpointing_steps) == 0:
                save_checkpoint(run, state)
            if state.completed_steps >= plan.max_train_steps:
                break
        if state.last_eval_step != state.completed_steps:
            run_eval(run, state, log, epoch + state.batches_done / n_batches)
        log.write({"step": state.completed_steps, "epoch": epoch + 1,
                   "epoch_train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1)})
        state.epoch, state.batches_done, state.epoch_loss_sum, state.epoch_loss_count = epoch + 1, 0, 0.0, 0
        state.train_runtime_s = time.time() - started
        if args.checkpointing_steps == "epoch":
            save_checkpoint(run, state)
        if state.completed_steps >= plan.max_train_steps:
            break


HESS_LOG_EVERY = 100  # IVON Hessian statistics sort the whole Hessian: cheap for adapters, not for a full model


def _model_stats(run: Run, hessian: bool = True) -> dict:
    """Rank budget and kept ranks (AdaLoRA/VILoRA) and, if `hessian`, IVON's Hessian and posterior statistics
    for the log line."""
    stats = {}
    if run.adaptive:
        base = run.peft_model.base_model
        stats["budget"] = base.current_budget
        stats["kept_ranks"] = int(sum(base.kept_ranks().values()))
    if hessian and run.ivon is not None and hasattr(run.ivon, "hess_stats"):
        stats |= {f"hess_{k}": float(v) for k, v in run.ivon.hess_stats()[0].items()}
        stats |= posterior_stats(run)
    return stats


@torch.no_grad()
def posterior_stats(run: Run) -> dict[str, float]:
    """How IVON's posterior and steps compare with the weights, over the adapter elements (lora_A/E/B; every
    trainable element for full fine-tuning), the ones the posterior scores rank:

    * ``post_sigma_median``, ``post_absmu_median``, ``post_snr_median``: medians of σ, |μ| and |μ|/σ;
    * ``clip_fraction``: share of elements whose last step was cut by the clip radius, i.e.
      |(m/d + δμ)/(h + δ)| >= clip_radius, recomputed from the state after the step;
    * ``mean_shift_rms``: the root mean square distance of the means from where this run started (its first
      update's starting point, kept in checkpoints), and ``mean_shift_rel``, that distance over the RMS of
      the starting means.
    These are the quantities that say whether a schedule is long enough for IVON (scripts/short_horizon.py).
    """
    opt = run.ivon
    names = {id(p): n for n, p in run.peft_model.named_parameters()}
    adapters = any(".lora_" in n for n in names.values())
    # The script builds IVON with one parameter group (build_optimizer), so one set of hyperparameters.
    group = opt.param_groups[0]
    debias = (1.0 - group["beta1"] ** opt.current_step) if opt.current_step else 1.0
    parts, offset = {"mu": [], "hess": [], "momentum": [], "start": []}, 0
    for p in group["params"]:
        n = p.numel()
        if not adapters or ".lora_" in names.get(id(p), ""):
            mu, st = p.detach().reshape(-1).float(), opt.param_state(p)
            parts["mu"].append(mu)
            parts["hess"].append(st["hess"].reshape(-1).float())
            parts["momentum"].append(st["momentum"].reshape(-1).float())
            if run.start_means is not None:
                parts["start"].append(run.start_means[offset:offset + n].to(mu.device))
        offset += n
    if not parts["mu"]:
        return {}
    return ivon_element_stats(torch.cat(parts["mu"]), torch.cat(parts["hess"]), torch.cat(parts["momentum"]),
                              torch.cat(parts["start"]) if parts["start"] else None, ess=opt.param_groups[0]["ess"],
                              weight_decay=opt.param_groups[0]["weight_decay"], debias=debias,
                              clip_radius=opt.param_groups[0]["clip_radius"])


def ivon_element_stats(mu: torch.Tensor, hess: torch.Tensor, momentum: torch.Tensor, start: torch.Tensor | None, *,
                       ess: float, weight_decay: float, debias: float, clip_radius: float) -> dict[str, float]:
    """posterior_stats' numbers from flat float tensors of means, Hessian, momentum and starting means (None:
    no distance), for one set of IVON hyperparameters; bench/ivon_horizon.py computes them from checkpoints."""
    sigma = 1.0 / torch.sqrt(ess * (hess + weight_decay))
    clipped = ((momentum / debias + weight_decay * mu) / (hess + weight_decay)).abs() >= clip_radius
    stats = {"post_sigma_median": sigma.median().item(), "post_absmu_median": mu.abs().median().item(),
             "post_snr_median": (mu.abs() / sigma).median().item(), "clip_fraction": clipped.float().mean().item()}
    if start is not None:
        stats["mean_shift_rms"] = (mu - start).square().mean().sqrt().item()
        stats["mean_shift_rel"] = stats["mean_shift_rms"] / max(start.square().mean().sqrt().item(), 1e-30)
    return stats


def trainable_flat(run: Run) -> torch.Tensor:
    """The trainable parameters as one float32 vector on the CPU, in IVON's order (the start of the means)."""
    return torch.cat([p.detach().reshape(-1).float().cpu() for g in run.ivon.param_groups for p in g["params"]])


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(run: Run, loader: DataLoader) -> dict[str, float]:
    """Dev-set metrics; under IVON with --ivon_infer_mc_samples K > 0 the prediction is the mean over K
    posterior samples of the logits (regression scores included), else the posterior-mean model's.

    Several processes: the loader is accelerate-prepared, so each process predicts its share of the dev set
    (under IVON with its own posterior samples), and `gather_for_metrics` collects the predictions in dataset
    order with the padding of the last batches dropped. Every process then computes the same metric over
    exactly the dev set; `run.n_eval` counts the examples scored.
    """
    run.model.eval()
    samples = run.args.ivon_infer_mc_samples if run.ivon is not None else 0
    multi = getattr(run.accelerator, "num_processes", 1) > 1
    run.n_eval = 0
    for batch in loader:
        batch = {k: v.to(run.accelerator.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        if samples:
            logits = 0
            for _ in range(samples):
                with run.ivon.sampled_params(train=False):
                    logits = logits + run.model(**batch).logits.float()
            logits = logits / samples
        else:
            logits = run.model(**batch).logits.float()
        preds = logits[:, 0] if run.is_regression else logits.argmax(dim=-1)
        if multi:
            preds, labels = run.accelerator.gather_for_metrics((preds, labels))
        run.metric.add_batch(predictions=preds.cpu().numpy(), references=labels.cpu().numpy())
        run.n_eval += len(preds)
    run.model.train()
    return run.metric.compute()


def run_eval(run: Run, state: TrainState, log: JsonlLog, epoch: float) -> dict[str, float]:
    """Evaluate on the dev split(s), log, and keep the best result by the task's primary metric."""
    results = {f"eval_{k}": v for k, v in evaluate(run, run.eval_loaders["validation"]).items()}
    n_eval = run.n_eval
    if "validation_mismatched" in run.eval_loaders:  # MNLI: both dev sets (the fork kept only mismatched)
        results |= {f"eval_{k}_mm": v for k, v in evaluate(run, run.eval_loaders["validation_mismatched"]).items()}
    primary = "eval_" + PRIMARY_METRIC.get(run.metric_task, "accuracy")
    value, best = results[primary], state.best_metric
    if best is None or (not math.isnan(value) and (math.isnan(best) or value > best)):  # NaN (constant preds) loses
        state.best_metric, state.best_step, state.best_eval = results[primary], state.completed_steps, dict(results)
    state.last_eval, state.last_eval_step = results, state.completed_steps
    log.write({"step": state.completed_steps, "epoch": epoch} | results | _model_stats(run) | {"n_eval": n_eval})
    run.accelerator.print(f"step {state.completed_steps}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    if run.args.with_tracking:
        run.accelerator.log(results, step=state.completed_steps)
    if run.args.lr_scheduler_type in METRIC_SCHEDULERS and not run.args.use_custom_lr_schedule and run.scheduler:
        run.scheduler.step(-results[primary])  # these schedulers minimise; higher metrics are better
    return results


# ----------------------------------------------------------------------------------------------- output folder
MANIFEST = ".run_manifest.json"  # what runs of this script wrote in the folder: the only things it ever deletes
LOCK_FILE = ".lock"              # flock'ed by the run that uses the folder
# Names this script writes in an output folder (its own and save_pretrained's for models and tokenizers). A folder
# holding one of them belongs to another run, or would lose a file, unless --overwrite_output_dir says otherwise.
OUTPUT_NAMES = ("all_results.json", "log.jsonl", "run_config.json", "rank_pattern.json", "ivon_state.pt",
                "checkpoints", "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md",
                "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "chat_template.jinja", "vocab.txt", "vocab.json", "merges.txt", "spm.model",
                "sentencepiece.bpe.model")


def _output_error(out: Path, e: OSError) -> UsageError:
    """An OSError met while writing in OUT (no permission, a file in the way, a full disk) as one line."""
    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    return UsageError(f"cannot write the outputs in {out}: {e.strerror or e}{where}")


def _agree(acc: Accelerator, error: Exception | None) -> None:
    """Raise on every process the first error any process met. A collective (every process calls it): where only
    the main process writes, the others learn that it stopped instead of waiting for it forever."""
    if acc.num_processes > 1:
        from accelerate.utils import gather_object
        error = next((e for e in gather_object([error]) if e is not None), None)
    if error is not None:
        raise error


def _manifest_entry_ok(entry: Any) -> bool:
    """A manifest entry names something inside the folder: relative, no '..', not the lock or manifest itself
    (the manifest is input: a crafted one must not delete anything outside)."""
    if not isinstance(entry, str) or not entry.strip("/") or entry.startswith("/") or "\\" in entry:
        return False
    parts = entry.rstrip("/").split("/")
    return all(p not in ("", ".", "..") for p in parts) and entry.rstrip("/") not in (MANIFEST, LOCK_FILE)


def _recorded(out: Path) -> list[str]:
    """The entries of OUT/.run_manifest.json: 'name' a file or folder a run of this script wrote whole, 'name/' a
    folder it made to hold such files. [] without a manifest; an unreadable one is reported and ignored."""
    try:
        entries = json.loads((out / MANIFEST).read_text())["written"]
        if not isinstance(entries, list):
            raise TypeError
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        _warn_once(f"{out / MANIFEST} is unreadable; ignoring it (nothing it lists will be deleted)")
        return []
    return [e for e in entries if _manifest_entry_ok(e)]


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    print(f"run_glue_no_trainer.py: warning: {message}", file=sys.stderr)


def _record(out: Path, add: list[str] = (), drop: list[str] = ()) -> None:
    """Add entries to the manifest before writing them (so that a run killed mid-write leaves nothing unlisted),
    and drop those of temp files removed again. Main process only; the manifest is replaced atomically."""
    entries = _recorded(out)
    new = [e for e in entries if e not in drop] + [e for e in dict.fromkeys(add) if e not in entries]
    if new != entries or not (out / MANIFEST).exists():
        _write_manifest(out, new)


def _write_manifest(out: Path, entries: list[str]) -> None:
    _write_json_atomic(out / MANIFEST, {"about": "written by run_glue_no_trainer.py; --overwrite_output_dir deletes "
                                                 "these and nothing else", "written": entries})


def _made_dirs(out: Path, rel: Path) -> list[str]:
    """Manifest entries ('a/', 'a/b/') for the folders above OUT/rel that do not exist yet."""
    return [f"{p.as_posix()}/" for p in reversed(rel.parents) if p != Path(".") and not (out / p).exists()]


def _remove_recorded(out: Path) -> None:
    """Delete what the manifest lists, and nothing else: files and folders written whole go; folders made to hold
    them go only if empty (a user's file inside stays). Then start an empty manifest."""
    entries = _recorded(out)
    for entry in (e for e in entries if not e.endswith("/")):
        path = out / entry
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    for entry in sorted((e for e in entries if e.endswith("/")), key=lambda e: -e.count("/")):
        with contextlib.suppress(OSError):  # not empty, or gone
            (out / entry).rmdir()
    _write_manifest(out, [])


class OutputLock:
    """An exclusive flock on OUT/.lock, taken by the main process before it writes anything in OUT and held until
    the run ends. The OS drops a flock when its process dies, so a killed run leaves no stale lock: its file stays,
    naming the last holder, but only a live holder blocks."""

    def __init__(self) -> None:
        self.fd: int | None = None

    def acquire(self, out: Path, create: bool) -> None:
        """Lock OUT/.lock, creating it if `create` (without: a missing file means no run holds it). Raises
        OutputDirBusy if another process holds it, OSError if it cannot be opened (e.g. it is a symlink)."""
        if self.fd is not None:
            return
        path = out / LOCK_FILE
        try:  # O_NOFOLLOW: a planted symlink must not make this run truncate someone else's file
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0), 0o666)  # umask decides
        except (FileNotFoundError, PermissionError):
            if create:
                raise
            return  # no run has used the folder, or it cannot be written (which _check_writable reports)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = " ".join(os.pread(fd, 200, 0).decode(errors="replace").split())
            os.close(fd)
            raise OutputDirBusy(f"{out} is in use by another run{f' ({holder})' if holder else ''}; wait for it to "
                                "end or choose another --output_dir") from None
        except OSError as e:  # a filesystem without locks: go on, but say so
            os.close(fd)
            print(f"run_glue_no_trainer.py: warning: cannot lock {path} ({e.strerror}); nothing stops another run "
                  "from using this folder at the same time", file=sys.stderr)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Unlock (the file stays: deleting it would let two runs lock two different files)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------------------------- checkpoints
CHECKPOINT_MARKER = "complete.json"  # written last: every other file of the checkpoint with its size


def _checkpoint_dirs(out: Path) -> list[Path]:
    """Every OUT/checkpoints/step_<n> folder, complete or not, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step_") and d.name[5:].isdigit()]
    return sorted(found, key=lambda d: int(d.name[5:]))


def _checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint folder `path` cannot be resumed (None: it is complete): no completion marker, a file it
    lists missing or of another size (truncated), or a state.json that is not this script's training state."""
    try:
        if not any(path.iterdir()):
            return "empty folder"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    try:
        files = json.loads((path / CHECKPOINT_MARKER).read_text())["files"]
        if not (isinstance(files, dict) and "state.json" in files and all(
                isinstance(n, str) and "/" not in n and n not in ("", ".", "..") and isinstance(size, int)
                for n, size in files.items())):
            raise ValueError
    except FileNotFoundError:
        return f"no {CHECKPOINT_MARKER}: it was never finished"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{CHECKPOINT_MARKER} is unreadable"
    for name, size in files.items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if (path / name).stat().st_size != size:
            return f"{name} has {(path / name).stat().st_size} bytes, {size} were written"
    try:
        state = TrainState(**json.loads((path / "state.json").read_text()))
        if not (isinstance(state.seed, int) and isinstance(state.completed_steps, int)):
            raise TypeError
    except (OSError, ValueError, TypeError):
        return "state.json does not hold a training state"
    return None


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints (`_checkpoint_problem` finds none), oldest first."""
    return [d for d in _checkpoint_dirs(out) if _checkpoint_problem(d) is None]


def _fsync_dir(path: Path) -> None:
    """Make a folder's entries (a new file, a rename) durable; filesystems that cannot are left as they are."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_torch_file(path: Path, map_location=None) -> Any:
    """torch.load restricted to tensors and plain values (weights_only=True), so that a checkpoint or adapter
    folder someone else wrote can never run code here. Anything else, or an unreadable/truncated file, is bad
    input named in one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"{path}: refusing to load: it holds objects other than tensors and plain values, "
                         f"which could run code ({str(e).splitlines()[0][:200]})") from None
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot be read: truncated or not a torch file ({type(e).__name__})") from None


def _rng_states() -> dict:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _rng_file(rank: int) -> str:
    """Each process's RNG state file in a checkpoint (rank 0 keeps the single-process name)."""
    return "rng.pt" if rank == 0 else f"rng_rank{rank}.pt"


def seed_process(seed: int, rank: int) -> None:
    """Give process `rank` > 0 its own RNG stream (IVON's posterior samples, dropout), derived from the seed.

    Every process starts from `seed`, so the model and adapter are initialised identically; this is called
    once setup is done. Rank 0 keeps the seed's stream, as a single-process run does.
    """
    if rank > 0:
        transformers.set_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]) % 2**31)


def _set_rng_states(states: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(run: Run, state: TrainState) -> Path:
    """Write OUT/checkpoints/step_<n>/ (trainable weights, optimizer, scheduler, allocator, RNG, data position).

    Everything goes into a hidden temp folder first, each file fsynced; complete.json, listing every file with
    its size, is written last and fsynced with the folder, which is then renamed. So a kill or a power cut at
    any moment leaves either a complete checkpoint or one that `_checkpoint_problem` rejects. Several processes:
    every process writes its own RNG state into the temp folder; weights, optimizer, scheduler and allocator
    state are identical on all of them (DDP and IVON's sync make every update the same), so the main process
    writes the single copy. A write error (a full disk) stops every process alike, and the temp folder goes.
    """
    acc = run.accelerator
    main = acc.is_main_process
    root = run.out / "checkpoints"
    final = root / f"step_{state.completed_steps}"
    tmp, old = root / f".tmp_{final.name}", root / f".old_{final.name}"  # fixed names: every process finds tmp
    error = None
    if main:
        try:
            _record(run.out, add=_made_dirs(run.out, Path("checkpoints", final.name)) +
                    [f"checkpoints/{p.name}" for p in (final, tmp, old)])
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
            tmp.mkdir()
        except OSError as e:
            error = _output_error(run.out, e)
    _agree(acc, error)
    try:
        try:
            _save_file(tmp / _rng_file(acc.process_index), _rng_states(), fsync=True)
            if main:
                model = run.peft_model
                weights = model.state_dict() if run.kind == "full" else \
                    {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
                _save_file(tmp / "model.pt", weights, fsync=True)
                _save_file(tmp / "optimizer.pt", run.optimizer.state_dict(), fsync=True)
                _save_file(tmp / "scheduler.pt", run.scheduler.state_dict(), fsync=True)
                if run.adaptive:
                    _save_file(tmp / "allocator.pt", model.base_model.allocator_state_dict(), fsync=True)
                if run.start_means is not None:
                    _save_file(tmp / "start_means.pt", run.start_means, fsync=True)
                if acc.scaler is not None:
                    _save_file(tmp / "scaler.pt", acc.scaler.state_dict(), fsync=True)
                _save_file(tmp / "args.json", json.dumps(vars(run.args), default=str).encode(), fsync=True)
                _save_file(tmp / "state.json", json.dumps(dataclasses.asdict(state)).encode(), fsync=True)
        except OSError as e:
            error = _output_error(run.out, e)
        _agree(acc, error)  # every RNG file is in place
        if main:
            try:
                sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
                _save_file(tmp / CHECKPOINT_MARKER, json.dumps({"files": sizes}).encode(), fsync=True)
                _fsync_dir(tmp)
                os.chmod(tmp, 0o755)
                if final.exists():  # e.g. an epoch checkpoint at the step of a step checkpoint: replace it
                    os.replace(final, old)
                    os.replace(tmp, final)
                    shutil.rmtree(old)
                else:
                    os.replace(tmp, final)
                _fsync_dir(root)
                _record(run.out, drop=[f"checkpoints/{tmp.name}", f"checkpoints/{old.name}"])
            except OSError as e:
                error = _output_error(run.out, e)
        _agree(acc, error)
    except UsageError:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_rng(run: Run, path: Path) -> dict | None:
    """This process's RNG states in checkpoint `path` (None if it has no file for this process: it was written
    by fewer processes). Read with the rest of the checkpoint, before anything is written; set last."""
    f = path / _rng_file(run.accelerator.process_index)
    if not f.is_file():
        return None
    states = load_torch_file(f)
    if not (isinstance(states, dict) and {"python", "numpy", "torch"} <= set(states)):
        raise UsageError(f"{f}: not an RNG state file of this script")
    return states


def restore_rng(run: Run, path: Path, states: dict | None) -> None:
    """Set this process's RNG state from `read_rng`'s result. A process the checkpoint has no file for gets a
    stream derived from the seed and the step instead."""
    if states is not None:
        _set_rng_states(states)
        return
    saved = json.loads((path / "state.json").read_text())
    print(f"note: {path} has no {_rng_file(run.accelerator.process_index)} (written by fewer processes); process "
          f"{run.accelerator.process_index} continues with a fresh RNG stream", file=sys.stderr)
    seed_process(saved["seed"] + saved["completed_steps"], run.accelerator.process_index)


# Flags that may differ when resuming: where and how the run reports, not what it trains; and the per-process
# batch, since the global batch (per process x processes) is what must match and load_checkpoint compares it.
# Everything else (task, data, model, method, criterion, ranks, schedules, optimizer settings, seed,
# evaluation) must match the checkpoint, or the resumed run would silently be another experiment.
RESUME_MAY_CHANGE = frozenset({"resume_from_checkpoint", "overwrite_output_dir", "output_dir", "with_tracking",
                               "report_to", "project_prefix", "checkpointing_steps", "push_to_hub", "hub_model_id",
                               "hub_token", "per_device_train_batch_size"})


def check_resumed_args(args: argparse.Namespace, path: Path) -> None:
    """Refuse to resume checkpoint `path` with flags other than those it was trained with (RESUME_MAY_CHANGE
    excepted; an omitted --seed means the checkpoint's). Checkpoints of older versions, without args.json,
    are compared with the run_config.json of their run folder when there is one."""
    saved_file = path / "args.json"
    if saved_file.is_file():
        saved = json.loads(saved_file.read_text())
    elif (path.parent.parent / "run_config.json").is_file():
        saved = json.loads((path.parent.parent / "run_config.json").read_text()).get("args", {})
    else:
        return
    now = json.loads(json.dumps(vars(args), default=str))
    differ = sorted(k for k in now.keys() | saved.keys() if k not in RESUME_MAY_CHANGE and now.get(k) != saved.get(k)
                    and not (k == "seed" and now.get(k) is None))
    if differ:
        shown = ", ".join(f"--{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:4])
        raise UsageError(f"checkpoint {path} was trained with other flags ({shown}{', ...' if len(differ) > 4 else ''}"
                         "); resume with the original flags, or start over with --overwrite_output_dir")


def load_checkpoint(run: Run, path: Path) -> TrainState:
    """Restore a checkpoint written by save_checkpoint; the RNG state is restored by the caller, last."""
    check_resumed_args(run.args, path)
    state = TrainState(**json.loads((path / "state.json").read_text()))
    batch = run.args.per_device_train_batch_size * run.accelerator.num_processes
    if state.train_batch_size is not None and state.train_batch_size != batch:
        raise UsageError(f"checkpoint {path} was trained with a global batch of {state.train_batch_size}, this run's "
                         f"is {batch} (--per_device_train_batch_size {run.args.per_device_train_batch_size} x "
                         f"{run.accelerator.num_processes} processes); resume with the same global batch")
    model = run.peft_model
    # torch.load restores only "cpu" (not the "cpu:<rank>" devices of CPU processes) or an accelerator device
    device = "cpu" if run.accelerator.device.type == "cpu" else run.accelerator.device
    weights = load_torch_file(path / "model.pt", map_location=device)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or (trainable - set(weights)):
        raise UsageError(f"checkpoint {path} does not match the model (missing {sorted(trainable - set(weights))[:3]},"
                         f" unexpected {unexpected[:3]}); resume with the flags of the original run")
    # IVON keeps its hess/momentum buffers in param_groups, which torch does not move; AdamW wants CPU step counts.
    opt_device = device if run.ivon is not None else "cpu"
    run.optimizer.load_state_dict(load_torch_file(path / "optimizer.pt", map_location=opt_device))
    run.scheduler.load_state_dict(load_torch_file(path / "scheduler.pt"))
    if run.adaptive:
        model.base_model.load_allocator_state_dict(load_torch_file(path / "allocator.pt", map_location=device))
    if run.ivon is not None and (path / "start_means.pt").is_file():
        run.start_means = load_torch_file(path / "start_means.pt")
    if (path / "scaler.pt").exists() and run.accelerator.scaler is not None:
        run.accelerator.scaler.load_state_dict(load_torch_file(path / "scaler.pt"))
    run.resume_rng = read_rng(run, path)
    return state


# ----------------------------------------------------------------------------------------------- outputs
def _rank_masks(rank_pattern: dict | None) -> dict[str, list[bool]]:
    """rank_pattern keys with the adapter name stripped: '<module path>.lora_E' -> [bool] * init_r."""
    return {k.removesuffix(".default"): list(map(bool, v)) for k, v in (rank_pattern or {}).items()}


def ivon_state_by_name(run: Run) -> dict[str, dict[str, torch.Tensor]]:
    """IVON's per-parameter hess/momentum (via `param_state`), cut to the saved adapter's kept triplets.

    AdaLoRA/VILoRA adapters are saved with only the kept triplets (A rows, E rows, B columns of the rank
    pattern), so the per-element state is cut the same way and loads straight onto the resized adapter.
    """
    model = run.peft_model
    masks = _rank_masks(model.peft_config["default"].rank_pattern) if run.adaptive else {}
    result = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        st = {k: v.detach().clone().cpu() for k, v in run.ivon.param_state(p).items()}
        for part, dim in ((".lora_A.", 0), (".lora_E.", 0), (".lora_B.", 1)):
            if part in name:
                module = name.split(part)[0].removeprefix("base_model.model.")
                mask = masks.get(f"{module}.lora_E")
                if mask is not None and len(mask) == p.shape[dim] and not all(mask):
                    keep = torch.tensor(mask)
                    st = {k: v[keep] if dim == 0 else v[:, keep] for k, v in st.items()}
        result[name] = st
    return result


# IVON state files beside a saved adapter, in the order they are looked for: ours, then the original code's
# (ivon_hessian_resized.state for AdaLoRA/VILoRA, ivon_hessian.state otherwise).
IVON_STATE_FILES = ("ivon_state.pt", "ivon_hessian_resized.state", "ivon_hessian.state")


def find_ivon_state(folder: Path) -> Path | None:
    """The IVON state file saved with the adapter in `folder`, or None."""
    return next((folder / n for n in IVON_STATE_FILES if (folder / n).is_file()), None)


def read_ivon_state(path: Path) -> dict:
    """A saved IVON state, safely: ours ({ess, weight_decay, params: {name: {hess, momentum}}}) or the original
    code's ({hess: one flat tensor in parameter order, ess, weight_decay, numel})."""
    saved = load_torch_file(path, map_location="cpu")
    ours = isinstance(saved, dict) and isinstance(saved.get("params"), dict)
    fork = isinstance(saved, dict) and isinstance(saved.get("hess"), torch.Tensor) and saved["hess"].dim() == 1
    if not (ours or fork) or not isinstance(saved.get("ess"), (int, float)):
        raise UsageError(f"{path}: not an IVON state file (expected ess and a Hessian per parameter or one flat "
                         "Hessian)")
    return saved


def load_ivon_state(run: Run, path: Path) -> None:
    """Continue IVON from a saved adapter: copy its Hessian into the matching params (the fork restored hess
    only; momentum and the step counter start afresh, as a new run's would). The original code's flat Hessian
    is laid out in parameter order, as IVON's own state is."""
    saved = read_ivon_state(path)
    params = [(n, p) for n, p in run.peft_model.named_parameters() if p.requires_grad]
    if "params" in saved:
        for name, p in params:
            hess = saved["params"].get(name, {}).get("hess")
            if not isinstance(hess, torch.Tensor) or hess.shape != p.shape:
                raise UsageError(f"{path}: no IVON Hessian of shape {tuple(p.shape)} for {name}; was it saved with "
                                 "this adapter?")
            run.ivon.param_state(p)["hess"].copy_(hess)
    else:
        flat, total = saved["hess"], sum(p.numel() for _, p in params)
        if flat.numel() != total:
            raise UsageError(f"{path}: its Hessian has {flat.numel()} elements, the adapter's trainable parameters "
                             f"{total}; was it saved with this adapter?")
        for (_, p), hess in zip(params, flat.split([p.numel() for _, p in params])):
            run.ivon.param_state(p)["hess"].copy_(hess.view_as(p))
    ess = run.ivon.param_groups[0].get("ess")
    if ess is not None and saved.get("ess") != ess:
        run.accelerator.print(f"note: {path.name} was trained with ess={saved.get('ess')}, this run uses ess={ess}")


def _save_pretrained_atomic(obj, out: Path) -> None:
    """save_pretrained into a temp folder in `out`, then move each file into place with os.replace; everything
    is recorded in the manifest first."""
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".tmp_save_"))
    try:
        _record(out, add=[tmp.name])
        try:
            obj.save_pretrained(tmp)
        except SafetensorError as e:  # safetensors' own report of a failed write (a full disk)
            raise OSError(str(e)) from None
        files = [f.relative_to(tmp) for f in sorted(tmp.rglob("*")) if f.is_file()]
        _record(out, add=[d for f in files for d in _made_dirs(out, f)] + [f.as_posix() for f in files])
        for rel in files:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp / rel, 0o644)
            os.replace(tmp / rel, out / rel)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _record(out, drop=[tmp.name])


def save_outputs(run: Run, state: TrainState) -> dict:
    """Write the trained model/adapter, tokenizer, IVON state, rank pattern, and all_results.json last."""
    out, model, args = run.out, run.peft_model, run.args
    names = ["all_results.json"]
    if not args.eval_only and run.ivon is not None:
        names.append("ivon_state.pt")
    if not args.eval_only and run.adaptive:
        names.append("rank_pattern.json")
    _record(out, add=names)
    if not args.eval_only:
        if run.ivon is not None:  # before save_pretrained: the pattern still matches the unresized tensors
            _torch_save_atomic({"ess": run.ivon.param_groups[0].get("ess"),
                                "weight_decay": run.ivon.param_groups[0].get("weight_decay"),
                                "params": ivon_state_by_name(run)}, out / "ivon_state.pt")
        _save_pretrained_atomic(model, out)
        _save_pretrained_atomic(run.tokenizer, out)
        if run.adaptive:
            _write_json_atomic(out / "rank_pattern.json", _final_rank_pattern(run))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    results = dict(state.last_eval)
    results |= {f"best_{k}": v for k, v in state.best_eval.items()}
    cfg = getattr(model, "peft_config", {}).get("default")
    results |= {"best_step": state.best_step, "task_name": args.task_name, "seed": state.seed,
                "train_steps": state.completed_steps, "train_runtime_s": round(state.train_runtime_s, 3),
                "trainable_params": trainable, "lora_type": run.kind, "use_ivon": run.ivon is not None,
                "criterion": getattr(cfg, "criterion", None) or ("sensitivity" if run.kind == "adalora" else None)}
    if run.adaptive:
        results["kept_ranks"] = int(sum(model.base_model.kept_ranks().values()))
    _write_json_atomic(out / "all_results.json", results)
    return results


def _final_rank_pattern(run: Run) -> dict[str, list[bool]]:
    """The final rank pattern; all triplets kept for modules the allocator never masked."""
    model = run.peft_model
    masks = _rank_masks(model.peft_config["default"].rank_pattern)
    init_r = model.peft_config["default"].init_r
    for name, _ in model.named_parameters():
        if ".lora_E." in name:
            key = name.split(".lora_E.")[0].removeprefix("base_model.model.") + ".lora_E"
            masks.setdefault(key, [True] * init_r)
    return dict(sorted(masks.items()))


def run_config(args: argparse.Namespace, seed: int) -> dict:
    """Resolved args, seed, package versions, git commit and start time for run_config.json."""
    versions = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "ivon", "accelerate", "datasets", "evaluate"):
        try:
            from importlib.metadata import version
            versions[pkg] = version(pkg)
        except Exception:
            versions[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"args": vars(args), "seed": seed, "versions": versions, "git_commit": commit,
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# ----------------------------------------------------------------------------------------------- Hub
def hub_repository(args: argparse.Namespace) -> str | None:
    """With --push_to_hub: log in and create the repository now, before training, so that a missing login, a
    bad token or no network is one line up front rather than an error after hours of training. Returns the
    repository id (None without --push_to_hub)."""
    if not args.push_to_hub:
        return None
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE",
                                                                                 "TRANSFORMERS_OFFLINE")):
        raise UsageError("--push_to_hub needs the Hub, but HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set; unset it "
                         "or drop --push_to_hub")
    from huggingface_hub import HfApi
    api = HfApi(token=args.hub_token)
    try:
        user = api.whoami()["name"]
        repo = args.hub_model_id or f"{user}/{Path(args.output_dir).resolve().name}"
        api.create_repo(repo, exist_ok=True)
    except Exception as e:  # no login, a bad token, no network, no permission: all stop the run here
        first = (str(e).splitlines() or [""])[0][:200]
        raise UsageError(f"--push_to_hub: cannot log in to the Hub or create the repository ({type(e).__name__}: "
                         f"{first}); check --hub_token (or `hf auth login`), --hub_model_id and the network") from None
    return repo


def push_outputs(args: argparse.Namespace, repo: str, out: Path) -> None:
    """Upload the finished run's outputs to `repo` (checkpoints, locks and hidden temp files stay local)."""
    from huggingface_hub import HfApi
    HfApi(token=args.hub_token).upload_folder(repo_id=repo, folder_path=str(out), commit_message="End of training",
                                              ignore_patterns=["checkpoints/**", ".*", "**/.*"])


# ----------------------------------------------------------------------------------------------- main
def _resume_point(args: argparse.Namespace, out: Path) -> Path | None:
    """The checkpoint folder to resume from: --resume_from_checkpoint PATH, or for 'latest' the newest complete
    one, skipping newer ones that are not (a one-line warning each); None when there is none, so that a
    preemptible job can always pass 'latest'. Main process only (see _claim_output_dir)."""
    if args.resume_from_checkpoint == "latest":
        skipped = False
        for path in reversed(_checkpoint_dirs(out)):
            problem = _checkpoint_problem(path)
            if problem is None:
                return path
            print(f"run_glue_no_trainer.py: warning: skipping checkpoint {path}: {problem}; falling back to the one "
                  "before", file=sys.stderr)
            skipped = True
        if skipped:
            print("run_glue_no_trainer.py: warning: no complete checkpoint left; starting from the beginning",
                  file=sys.stderr)
        return None
    if args.resume_from_checkpoint is None:
        return None
    # A folder named explicitly is used as it is (one of an older version has no completion marker); the
    # loaders name any file in it that is truncated or not what it should be.
    path = Path(args.resume_from_checkpoint)
    if not (path / "state.json").is_file():
        raise UsageError(f"--resume_from_checkpoint {path} is not a checkpoint folder (no state.json)")
    try:
        if not isinstance(json.loads((path / "state.json").read_text())["seed"], int):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"--resume_from_checkpoint {path}: state.json does not hold a training state") from None
    return path


def _setup(args: argparse.Namespace, lock: OutputLock) -> tuple[Run, TrainState, Path | None]:
    """Claim the output folder (`_claim_output_dir`), then load data and model, build optimizer and schedule, and
    read the checkpoint to resume: everything that can fail on bad input happens here, before anything is
    written in the output folder."""
    out = Path(args.output_dir)
    log_with = None
    if args.with_tracking:
        wanted = ("tensorboard", "wandb") if args.report_to == "all" else (args.report_to,)
        log_with = [t for t in wanted if _importable(t)]
    # Launched as several processes (accelerate launch --num_processes N, torchrun) on a machine without GPUs:
    # accelerate only sets up gloo on CPUs when asked to, otherwise every process would train alone.
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(mixed_precision=args.mixed_precision, log_with=log_with, project_dir=str(out),
                              cpu=launched > 1 and not torch.accelerator.is_available())
    world = accelerator.num_processes
    if world != launched:
        raise UsageError(f"launched as {launched} processes (WORLD_SIZE) but accelerate set up {world} "
                         f"({accelerator.distributed_type}); check the launcher's settings (`accelerate config`)")
    resume = _claim_output_dir(args, out, accelerator, lock)
    # A resumed run must shuffle with the original seed; a fresh run without --seed draws one and records it.
    seed = json.loads((resume / "state.json").read_text())["seed"] if resume else \
        (args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") % 2**31)
    transformers.set_seed(seed)  # the same on every process: identical initial weights (see seed_process)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()

    raw = load_glue(args)
    is_regression, label_names, label_to_id = label_setup(args, raw)
    plan = None if args.eval_only else plan_steps(args, len(raw["train"]), world)
    model, tokenizer = build_model(args, 1 if is_regression else len(label_names), label_names)
    kind = lora_kind(model)
    if args.apply_lora and kind in ("adalora", "vilora") and args.lora_path is not None and not args.eval_only:
        check_budget_schedule(model.peft_config["default"], plan.max_train_steps, f"{args.lora_path}")
    if kind == "vilora":
        args.use_ivon = True
    saved_ivon = find_ivon_state(Path(args.lora_path)) if args.lora_path is not None and args.use_ivon else None
    tokenized = tokenize_splits(args, raw, tokenizer, label_to_id)
    collator = default_data_collator if args.pad_to_max_length else DataCollatorWithPadding(
        tokenizer, pad_to_multiple_of=8 if args.mixed_precision in ("fp16", "bf16") else None)
    eval_names = [s for s in tokenized if s != "train"]
    # Prepared: with several processes each gets a share of the dev set (see evaluate).
    eval_loaders = {("validation" if s == "validation_matched" else s): accelerator.prepare(
                    _loader(tokenized[s], collator, batch_size=args.per_device_eval_batch_size)) for s in eval_names}
    train_ds = tokenized.get("train")

    optimizer = scheduler = None
    if not args.eval_only:
        optimizer = build_optimizer(args, model, len(train_ds), accelerator.device, sync=world > 1)
        scheduler = build_scheduler(args, optimizer, plan)
        # The scheduler stays unprepared: accelerate would step it once per process per update, for loaders it
        # shards itself; plan_steps already counts updates of the global batch.
        model, optimizer = accelerator.prepare(model, optimizer)
    elif args.use_ivon and args.ivon_infer_mc_samples > 0:  # predictive evaluation of a saved adapter
        if saved_ivon is None:
            raise UsageError("--eval_only with --ivon_infer_mc_samples samples the trained posterior: give "
                             "--lora_path with the adapter's IVON state (" + " or ".join(IVON_STATE_FILES) +
                             "); without one the samples would come from hess_init")
        ess = args.ivon_ess or read_ivon_state(saved_ivon)["ess"]  # the one it was trained with
        optimizer = build_optimizer(args, model, ess, accelerator.device, sync=world > 1)
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model = accelerator.prepare(model)
    ivon_opt = None
    if args.use_ivon:
        import ivon
        ivon_opt = ivon.unwrap_ivon(optimizer) if optimizer is not None else None
    metric_task = args.task_name or ("stsb" if is_regression else "sst2")
    # In memory: no cache files, which processes on one machine would otherwise contend for.
    metric = hf_evaluate.load(str(METRIC_DIR), metric_task, keep_in_memory=True)
    run = Run(args, accelerator, model, tokenizer, optimizer, scheduler, ivon_opt, kind, train_ds, eval_loaders,
              collator, plan, metric, metric_task, is_regression, out)
    if run.adaptive and not args.eval_only:
        run.peft_model.peft_config["default"].total_step = plan.max_train_steps  # after prepare, as the fork
        run.peft_model.base_model.set_optimizer(optimizer)
    if ivon_opt is not None and args.lora_path is not None:
        if saved_ivon is not None:
            load_ivon_state(run, saved_ivon)
        else:
            accelerator.print(f"note: {args.lora_path} has no IVON state ({', '.join(IVON_STATE_FILES)}); IVON's "
                              "Hessian starts at hess_init")
    if ivon_opt is not None and not args.eval_only:
        run.start_means = trainable_flat(run)  # a checkpoint's copy replaces it below
    state = load_checkpoint(run, resume) if resume else \
        TrainState(seed=seed, train_batch_size=args.per_device_train_batch_size * world)
    run.hub_repo = hub_repository(args)  # last: everything local is known to be fine
    return run, state, resume


def _check_writable(out: Path) -> None:
    """Create and remove a temp file where OUT is (or where it will be made), so that a folder this run cannot
    write in stops it now, in one line, rather than after training."""
    base = next(p for p in (out, *out.parents) if p.exists())
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=".run_glue_write_test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"--output_dir {out}: cannot write in {base} ({e.strerror})") from None


def _continues(out: Path, resume: Path | None) -> bool:
    """True when the run resumes a checkpoint of OUT itself, i.e. continues the run whose files OUT holds."""
    return resume is not None and resume.resolve().parent == (out / "checkpoints").resolve()


def _check_output_dir(args: argparse.Namespace, out: Path, resume: Path | None) -> None:
    """May this run write in OUT? Deletes nothing; raises AlreadyFinished (a finished run, without
    --overwrite_output_dir) or UsageError:

    * a run that does not continue OUT's own checkpoint, without --overwrite_output_dir, refuses a folder
      holding files of another run or files it would replace: step folders, what the manifest lists, and
      `OUTPUT_NAMES`. Unrelated files (e.g. the sweep launcher's train.log) are fine, and kept. With 'latest'
      and no complete checkpoint, what the manifest lists is this run's own earlier attempt: it starts over;
    * something in the way that would stay in the way (a file named checkpoints, a folder named log.jsonl).
    """
    if not out.is_dir():
        return
    if (out / "all_results.json").exists() and not args.overwrite_output_dir:
        raise AlreadyFinished(f"{out} already holds finished results (all_results.json); skipping. "
                              "Pass --overwrite_output_dir to run again.")
    recorded = _recorded(out)
    starts_over = not _continues(out, resume)
    if starts_over and not args.overwrite_output_dir:
        if args.resume_from_checkpoint is None and _checkpoint_dirs(out):
            raise UsageError(f"{out} holds checkpoints of an unfinished run; pass --resume_from_checkpoint latest "
                             "to continue it or --overwrite_output_dir to start over")
        own = {e.rstrip("/") for e in recorded} if args.resume_from_checkpoint == "latest" else set()
        names = dict.fromkeys([e for e in recorded if not e.endswith("/")] + list(OUTPUT_NAMES))
        found = [n for n in names if n not in own and os.path.lexists(out / n)]
        if found:
            raise UsageError(f"{out} holds files of another run or files this run would replace "
                             f"({', '.join(found[:4])}{', ...' if len(found) > 4 else ''}); pass "
                             "--overwrite_output_dir to replace them (only what this script wrote is deleted) or "
                             "choose another --output_dir")
    going = {e.rstrip("/") for e in recorded} if starts_over else set()
    for name in OUTPUT_NAMES:
        path = out / name
        if name == "checkpoints" and args.checkpointing_steps is None:
            continue
        if name not in going and os.path.lexists(path) and path.is_dir() != (name == "checkpoints"):
            raise UsageError(f"{path} is in the way: this run writes a {'folder' if name == 'checkpoints' else 'file'}"
                             " there; move it or choose another --output_dir")


def _claim_output_dir(args: argparse.Namespace, out: Path, acc: Accelerator, lock: OutputLock) -> Path | None:
    """Before anything is loaded, on the main process: lock OUT if it has a lock file (a run using OUT made one
    before writing anything else), check that it can be written (`_check_writable`) and that this run may use
    it (`_check_output_dir`), and pick the checkpoint to resume, all without writing. The main process's verdict
    and choice go to every process, so that all stop alike (exit 0, 2 or EXIT_BUSY) and none waits for a main
    process that has gone. Returns the checkpoint to resume (None: from the beginning)."""
    verdict, resume = None, None
    if acc.is_main_process:
        try:
            if out.is_dir():
                lock.acquire(out, create=False)
            _check_writable(out)
            resume = _resume_point(args, out)
            _check_output_dir(args, out, resume)
        except (AlreadyFinished, OutputDirBusy, UsageError) as e:
            verdict = e
        except OSError as e:  # e.g. a lock file that is a symlink, a folder that cannot be read
            verdict = _output_error(out, e)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list
        verdict, resume = broadcast_object_list([verdict, resume])
    if verdict is not None:
        raise verdict
    return resume


def _prepare_output_dir(run: Run, state: TrainState, resume: Path | None, lock: OutputLock) -> JsonlLog:
    """Start writing, on the main process: make OUT and lock it (if _claim_output_dir found no lock file), check it
    again under the lock (another run may have written there since), delete what earlier runs recorded when this
    run starts over (with --overwrite_output_dir, or 'latest' with no complete checkpoint; nothing else is ever
    deleted), trim the log to the checkpoint, and write run_config.json. Every process stops alike on an error.
    """
    out, args, acc = run.out, run.args, run.accelerator
    log_path = out / "log.jsonl"
    error = None
    if acc.is_main_process:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock.acquire(out, create=True)
            _check_output_dir(args, out, resume)
            if not _continues(out, resume):
                _remove_recorded(out)
            if args.overwrite_output_dir:  # a finished run's marker, also one an older version left unrecorded
                (out / "all_results.json").unlink(missing_ok=True)
            tracker = args.project_prefix + (args.task_name or "custom")  # accelerate's tensorboard folder
            _record(out, add=["log.jsonl", "run_config.json"] +
                    ([tracker] if args.with_tracking and not os.path.lexists(out / tracker) else []))
            lines = log_path.read_text().splitlines(keepends=True)[:state.log_lines] \
                if resume and log_path.exists() else []
            fd, tmp = tempfile.mkstemp(dir=out, prefix=".log.jsonl.")
            try:
                with os.fdopen(fd, "w") as f:
                    f.writelines(lines)
                os.chmod(tmp, 0o644)
                os.replace(tmp, log_path)  # lines a killed run wrote after its last checkpoint are dropped
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            _write_json_atomic(out / "run_config.json", run_config(args, state.seed) |
                               {"num_processes": acc.num_processes,
                                "total_train_batch_size": args.per_device_train_batch_size * acc.num_processes} |
                               ({"resumed_from": str(resume)} if resume else {}))
        except (AlreadyFinished, OutputDirBusy, UsageError) as e:
            error = e
        except OSError as e:
            error = _output_error(out, e)
    _agree(acc, error)
    if args.with_tracking:  # accelerate starts trackers on the main process only
        cfg = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        acc.init_trackers(args.project_prefix + (args.task_name or "custom"), cfg)
    acc.wait_for_everyone()
    return JsonlLog(log_path, state, enabled=acc.is_main_process)


def debug_dump(run: Run, state: TrainState, folder: Path) -> None:
    """Write this process's final state to folder/rank<r>.pt (tests compare processes; RUN_GLUE_DEBUG_DUMP_DIR):
    trainable weights, rank pattern, IVON momentum/Hessian/step, last eval, n_eval and the torch RNG state."""
    model = run.peft_model
    dump = {"params": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
            "rank_pattern": _final_rank_pattern(run) if run.adaptive else None,
            "last_eval": state.last_eval, "n_eval": run.n_eval, "completed_steps": state.completed_steps,
            "torch_rng": torch.get_rng_state()}
    if run.ivon is not None:
        dump["ivon"] = {n: {k: v.detach().cpu().clone() for k, v in run.ivon.param_state(p).items()}
                        for n, p in model.named_parameters() if p.requires_grad}
        dump["ivon_step"] = run.ivon.current_step
    folder.mkdir(parents=True, exist_ok=True)
    _torch_save_atomic(dump, folder / f"rank{run.accelerator.process_index}.pt")


def _is_main_launch() -> bool:
    """True in a single process or in the launcher's rank 0 (the Accelerator may not exist yet)."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit status: 0 ok (or the run had already finished), 1 training failed, 2 bad
    input or an output folder that cannot be written, EXIT_BUSY (75) the output folder is in use by another run.

    Under a distributed launch every process runs this; all of them validate the same flags and data, so a bad
    input stops each with status 2 (reported once, by rank 0) before any of them waits for another. Only the main
    process looks at, locks and writes the output folder, and it tells the others what it found (`_agree`), so
    that they stop with it instead of waiting. The folder's lock is released when this returns, and by the OS
    when the process dies.
    """
    lock = OutputLock()
    try:
        return _main(argv, lock)
    except AlreadyFinished as e:
        if _is_main_launch():
            print(e, file=sys.stderr)
        return 0
    except (UsageError, OutputDirBusy) as e:
        if _is_main_launch():
            print(f"run_glue_no_trainer.py: error: {e}", file=sys.stderr)
        return EXIT_BUSY if isinstance(e, OutputDirBusy) else 2
    finally:
        lock.release()


def _main(argv: list[str] | None, lock: OutputLock) -> int:
    """main()'s steps: arguments, setup, output folder, training or evaluation, outputs, Hub."""
    args = parse_args(argv)
    validate_args(args)
    check_settings(args)
    run, state, resume = _setup(args, lock)
    acc = run.accelerator
    log = _prepare_output_dir(run, state, resume, lock)
    if resume is not None:
        restore_rng(run, resume, run.resume_rng)  # last, so nothing consumes it first
        acc.print(f"resumed from {resume} at update {state.completed_steps}")
    else:
        seed_process(state.seed, acc.process_index)
    try:
        if args.eval_only:
            run_eval(run, state, log, epoch=0)
        else:
            train(run, state, log)
    except TrainingError as e:  # raised on every process at once (the loss check is collective)
        if acc.is_main_process:
            print(f"run_glue_no_trainer.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the log on a full disk (checkpoints report their own errors)
        raise _output_error(run.out, e) from None
    if os.environ.get("RUN_GLUE_DEBUG_DUMP_DIR"):
        debug_dump(run, state, Path(os.environ["RUN_GLUE_DEBUG_DUMP_DIR"]))
    error = None
    if acc.is_main_process:
        try:
            results = save_outputs(run, state)
        except OSError as e:
            error = _output_error(run.out, e)
        else:
            if run.adaptive:
                kept = run.peft_model.base_model.kept_ranks()
                width = max(map(len, kept), default=0)
                acc.print(f"final rank allocation ({sum(kept.values())} triplets kept):\n" +
                          "\n".join(f"  {name:<{width}}  {r}" for name, r in kept.items()))
            acc.print("results: " + json.dumps({k: v for k, v in results.items() if k.startswith("eval_")}))
    acc.wait_for_everyone()  # no process exits before the outputs are complete
    if error is not None:  # only the main process writes outputs; the others have nothing left to do
        raise error
    if args.with_tracking or acc.num_processes > 1:
        acc.end_training()  # ends trackers and the process group
    if run.hub_repo is not None and acc.is_main_process:
        try:
            push_outputs(args, run.hub_repo, run.out)
        except Exception as e:
            print(f"run_glue_no_trainer.py: error: the run finished and its outputs are in {run.out}, but pushing "
                  f"them to {run.hub_repo} failed ({type(e).__name__}: {str(e)[:200]})", file=sys.stderr)
            return 1
        acc.print(f"pushed {run.out} to https://huggingface.co/{run.hub_repo}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
