"""The flags' rules and what they imply, before anything is loaded or written.

The argparse pieces (`OneLineErrorParser` and the value types) make a bad flag one line, like every other check.

`validate_args` refuses impossible combinations, `check_settings` checks every number by the rule of the
library that will take it (peft, ivon, torch), `adapter_config` is the peft config the flags describe, and
`Resolved` holds what follows from the flags and from what setup finds (IVON implied by VILoRA, fp16 by --fp16,
the adapter's method, the step plan), so that `args` stays what the user said.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import torch

from .data import TASKS
from .errors import UsageError
from .schedule import metric_scheduler_kwargs, steps_with_metric


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, with a bad flag as a UsageError: one line, exit status 2."""

    def error(self, message: str):  # argparse would print the whole usage block; one line is enough
        raise UsageError(message)


def bool_value(text: str) -> bool:
    """A flag value of true/false (1/0, yes/no, y/n; empty is false)."""
    if text.lower() in ("1", "true", "yes", "y"):
        return True
    if text.lower() in ("0", "false", "no", "n", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def steps_or_epoch(text: str) -> str:
    """--checkpointing_steps: a positive number of updates, or 'epoch'."""
    if text == "epoch" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected a positive number of steps or 'epoch', got {text!r}")


# Used only when peft (which owns the registry) cannot be imported, so that flag checking still works.
_FALLBACK_CRITERIA = ("sensitivity", "SNR_mean_abs", "SNR", "mean", "sigma", "E_mean_abs")


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
    if implies_ivon(args) and mixed_precision(args) == "fp16":
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
        if args.report_to != "all" and not importable(args.report_to):
            raise UsageError(f"--report_to {args.report_to} needs the '{args.report_to}' package, which is not "
                             "installed; install it or drop --with_tracking")
        if args.report_to == "all" and not (importable("tensorboard") or importable("wandb")):
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
    if steps_with_metric(args):
        metric_scheduler_kwargs(args)  # the direction the dev metric is read in
    lrs = {"lr_schedule_first_lr": args.lr_schedule_first_lr, "lr_schedule_second_lr": args.lr_schedule_second_lr,
           "lr_schedule_end_lr": args.lr_schedule_end_lr} if args.use_custom_lr_schedule else \
        {"learning_rate": args.learning_rate}
    if implies_ivon(args):
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


def importable(module: str) -> bool:
    """True when `module` can be imported (e.g. a tracker package)."""
    return importlib.util.find_spec(module) is not None


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


def implies_ivon(args: argparse.Namespace) -> bool:
    """IVON trains the run: --use_ivon, or --lora_type vilora, whose scores come from IVON's posterior."""
    return args.use_ivon or (args.apply_lora and args.lora_type == "vilora")


def mixed_precision(args: argparse.Namespace) -> str | None:
    """accelerate's mixed precision: --mixed_precision, or fp16 with --fp16."""
    return "fp16" if args.fp16 else args.mixed_precision


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What the flags imply and setup finds, beside `args` (which stays what the user said).

    Built in steps as setup learns more (`dataclasses.replace`): from the flags (`resolve`), then the step plan
    once the training set is counted, then the adapter's method once the model (and any --lora_path adapter) is
    loaded; a loaded VILoRA adapter turns IVON on, as --lora_type vilora does.
    """
    use_ivon: bool                  # IVON trains (or samples) the model, else AdamW
    mixed_precision: str | None     # accelerate's setting
    plan: Any = None                # schedule.StepPlan; None for --eval_only
    method: str | None = None       # full | lora | adalora | vilora, once the model is built

    def recorded_args(self, args: argparse.Namespace) -> dict[str, Any]:
        """The flags as checkpoints (args.json) and run_config.json record them, with IVON and mixed precision
        resolved: what the run was trained with."""
        return vars(args) | {"use_ivon": self.use_ivon, "mixed_precision": self.mixed_precision}


def resolve(args: argparse.Namespace) -> Resolved:
    """What the validated flags imply before anything is loaded."""
    return Resolved(use_ivon=implies_ivon(args), mixed_precision=mixed_precision(args))
