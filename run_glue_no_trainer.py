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

This file is the training script, read top to bottom: arguments, setup, the training loop, evaluation, outputs.
Reading GLUE, schedules, checkpoints and the output folder live in `glue_run/` beside it (see its __init__).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets
import evaluate as hf_evaluate
import torch
import transformers
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    default_data_collator,
)

from glue_run import settings
from glue_run.batches import epoch_batches, make_loader, shard_batch
from glue_run.checkpoints import TrainState, complete_checkpoints, load_checkpoint, save_checkpoint
from glue_run.data import PRIMARY_METRIC, TASKS, class_ids, label_setup, load_glue, tokenize_splits
from glue_run.errors import (EXIT_BUSY, AlreadyFinished, OutputDirBusy, TrainingError, UsageError, agree,
                             is_main_launch, leave_process_group, output_error, stop_together)
from glue_run.ivon_files import IVON_STATE_FILES, find_ivon_state, load_ivon_state, read_ivon_state
from glue_run.ivon_stats import posterior_stats, trainable_flat
from glue_run.outdir import OutputLock, claim_output_dir, prepare_output_dir
from glue_run.outputs import JsonlLog, debug_dump, hub_repository, push_outputs, save_outputs
from glue_run.rng import restore_rng, seed_process
from glue_run.schedule import StepPlan, build_scheduler, check_budget_schedule, plan_steps, steps_with_metric

METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "glue"


# ----------------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (the paper's fork's flag names and defaults, plus --glue_dir and some safety flags)."""
    p = settings.OneLineErrorParser(description="Fine-tune on a GLUE task with LoRA/AdaLoRA/VILoRA and AdamW/IVON.")
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
    g.add_argument("--trust_remote_code", type=settings.bool_value, default=False,
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
    g.add_argument("--checkpointing_steps", type=settings.steps_or_epoch, default=None, help="N updates or 'epoch'")
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


# ----------------------------------------------------------------------------------------------- model

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
        config.label2id = class_ids(label_names)
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
            return peft.get_peft_model(model, settings.adapter_config(args)), tokenizer
        except ValueError as e:  # e.g. target modules that match nothing, or no default list for the model type
            hint = " (here: --lora_modules)" if "target_modules" in str(e) and not args.lora_modules else ""
            raise UsageError(f"adapter: {e}{hint}") from None
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


def method_of(model) -> str:
    """'full', or the adapter's method ('lora', 'adalora', 'vilora') as its peft config states it."""
    config = getattr(model, "peft_config", {}).get("default")
    return "full" if config is None else config.method


def build_optimizer(args, use_ivon: bool, model, n_train: int, device: torch.device, sync: bool = False):
    """IVON (`use_ivon`) over the trainable params (one group, model order) or AdamW with the usual no-decay group.

    `sync` (several processes): IVON averages its gradient statistics over the processes in step(), see train().
    """
    lr = 1.0 if args.use_custom_lr_schedule else args.learning_rate  # custom schedule values are absolute lrs
    if use_ivon:
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



# ----------------------------------------------------------------------------------------------- setup
@dataclasses.dataclass
class Run:
    """The objects one run works with, passed as one value to train/evaluate/save."""
    args: argparse.Namespace        # what the user said; never changed
    resolved: settings.Resolved     # what it implies: IVON or AdamW, the adapter's method, the step plan
    accelerator: Accelerator
    model: torch.nn.Module
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    ivon: Any                       # the raw IVON optimizer, or None
    train_dataset: datasets.Dataset | None
    eval_loaders: dict[str, DataLoader]
    collator: Callable
    metric: Any
    metric_task: str
    is_regression: bool
    out: Path
    n_eval: int = 0                 # dev examples the last evaluation scored (gathered over processes)
    start_means: torch.Tensor | None = None  # IVON: the means this run started from (posterior_stats)
    resume_rng: dict | None = None  # RNG states read from the checkpoint resumed, set last (restore_rng)
    hub_repo: str | None = None     # --push_to_hub: the repository, created before training

    @property
    def kind(self) -> str:
        """full | lora | adalora | vilora"""
        return self.resolved.method

    @property
    def plan(self) -> StepPlan | None:
        return self.resolved.plan

    @property
    def peft_model(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def adaptive(self) -> bool:
        return self.kind in ("adalora", "vilora")


def setup(args: argparse.Namespace, resolved: settings.Resolved,
          lock: OutputLock) -> tuple[Run, TrainState, Path | None]:
    """Everything before training that can fail on bad input, before anything is written in the output folder.

    The order matters: (1) `start`: the processes, then the output folder claimed before anything is loaded,
    then the seed (a resumed run's is its checkpoint's), set before the model is built; (2) `build_run`: data
    and model, a --lora_path adapter loaded before IVON is chosen (a VILoRA adapter turns IVON on), optimizer
    and schedule, accelerate's prepare, and only after it AdaLoRA's total_step and optimizer; (3) `restore`: an
    adapter's IVON state before the checkpoint, which replaces it; the checkpoint's RNG states are read here but
    set last, by main, once nothing else draws from them; the Hub repository last of all.
    """
    accelerator, resume, seed = start(args, resolved, lock)
    run = build_run(args, resolved, accelerator)
    state = restore(run, resume, seed)
    return run, state, resume


def start(args: argparse.Namespace, resolved: settings.Resolved,
          lock: OutputLock) -> tuple[Accelerator, Path | None, int]:
    """The Accelerator (one process or several), then the output folder claimed (`claim_output_dir`: locked,
    checked, the checkpoint to resume chosen, nothing written), then the seed: the checkpoint's, --seed, or drawn."""
    out = Path(args.output_dir)
    log_with = None
    if args.with_tracking:
        wanted = ("tensorboard", "wandb") if args.report_to == "all" else (args.report_to,)
        log_with = [t for t in wanted if settings.importable(t)]
    # Launched as several processes (accelerate launch --num_processes N, torchrun) on a machine without GPUs:
    # accelerate only sets up gloo on CPUs when asked to, otherwise every process would train alone.
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(mixed_precision=resolved.mixed_precision, log_with=log_with, project_dir=str(out),
                              cpu=launched > 1 and not torch.accelerator.is_available())
    world = accelerator.num_processes
    if world != launched:
        raise UsageError(f"launched as {launched} processes (WORLD_SIZE) but accelerate set up {world} "
                         f"({accelerator.distributed_type}); check the launcher's settings (`accelerate config`)")
    resume = claim_output_dir(args, out, accelerator, lock)
    # A resumed run must shuffle with the original seed; a fresh run without --seed draws one and records it.
    seed = json.loads((resume / "state.json").read_text())["seed"] if resume else \
        (args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") % 2**31)
    transformers.set_seed(seed)  # the same on every process: identical initial weights (see seed_process)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    return accelerator, resume, seed


def build_run(args: argparse.Namespace, resolved: settings.Resolved, accelerator: Accelerator) -> Run:
    """Data, step plan and model (a --lora_path adapter loaded with it: a VILoRA adapter turns IVON on), loaders,
    then optimizer and schedule, accelerate's prepare, and after it AdaLoRA's total_step and optimizer."""
    world = accelerator.num_processes
    raw = load_glue(args)
    is_regression, label_names, label_ids = label_setup(args, raw)
    if not args.eval_only:
        resolved = dataclasses.replace(resolved, plan=plan_steps(args, len(raw["train"]), world))
        if args.apply_lora and args.lora_type in ("adalora", "vilora") and args.lora_path is None:
            check_budget_schedule(settings.adapter_config(args), resolved.plan.max_train_steps,
                                  "--adalora_tinit/--adalora_tfinal/--adalora_delta_t")
    model, tokenizer = build_model(args, 1 if is_regression else len(label_names), label_names)
    method = method_of(model)
    resolved = dataclasses.replace(resolved, method=method, use_ivon=resolved.use_ivon or method == "vilora")
    if args.apply_lora and method in ("adalora", "vilora") and args.lora_path is not None and not args.eval_only:
        check_budget_schedule(model.peft_config["default"], resolved.plan.max_train_steps, f"{args.lora_path}")
    use_ivon = resolved.use_ivon
    saved_ivon = find_ivon_state(Path(args.lora_path)) if args.lora_path is not None and use_ivon else None
    tokenized = tokenize_splits(args, raw, tokenizer, label_ids)
    collator = default_data_collator if args.pad_to_max_length else DataCollatorWithPadding(
        tokenizer, pad_to_multiple_of=8 if resolved.mixed_precision in ("fp16", "bf16") else None)
    eval_names = [s for s in tokenized if s != "train"]
    # Prepared: with several processes each gets a share of the dev set (see evaluate).
    eval_loaders = {("validation" if s == "validation_matched" else s): accelerator.prepare(
                    make_loader(tokenized[s], collator, batch_size=args.per_device_eval_batch_size))
                    for s in eval_names}
    train_ds = tokenized.get("train")

    optimizer = scheduler = None
    if not args.eval_only:
        optimizer = build_optimizer(args, use_ivon, model, len(train_ds), accelerator.device, sync=world > 1)
        scheduler = build_scheduler(args, optimizer, resolved.plan)
        # The scheduler stays unprepared: accelerate would step it once per process per update, for loaders it
        # shards itself; plan_steps already counts updates of the global batch.
        model, optimizer = accelerator.prepare(model, optimizer)
    elif use_ivon and args.ivon_infer_mc_samples > 0:  # predictive evaluation of a saved adapter
        if saved_ivon is None:
            raise UsageError("--eval_only with --ivon_infer_mc_samples samples the trained posterior: give "
                             "--lora_path with the adapter's IVON state (" + " or ".join(IVON_STATE_FILES) +
                             "); without one the samples would come from hess_init")
        ess = args.ivon_ess or read_ivon_state(saved_ivon)["ess"]  # the one it was trained with
        optimizer = build_optimizer(args, use_ivon, model, ess, accelerator.device, sync=world > 1)
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model = accelerator.prepare(model)
    ivon_opt = None
    if use_ivon:
        import ivon
        ivon_opt = ivon.unwrap_ivon(optimizer) if optimizer is not None else None
    metric_task = args.task_name or ("stsb" if is_regression else "sst2")
    # In memory: no cache files, which processes on one machine would otherwise contend for.
    metric = hf_evaluate.load(str(METRIC_DIR), metric_task, keep_in_memory=True)
    run = Run(args, resolved, accelerator, model, tokenizer, optimizer, scheduler, ivon_opt, train_ds, eval_loaders,
              collator, metric, metric_task, is_regression, Path(args.output_dir))
    if run.adaptive and not args.eval_only:
        run.peft_model.peft_config["default"].total_step = resolved.plan.max_train_steps  # after prepare, as the fork
        run.peft_model.base_model.set_optimizer(optimizer)
    return run


def restore(run: Run, resume: Path | None, seed: int) -> TrainState:
    """The state training continues from: a --lora_path adapter's IVON Hessian, the means IVON starts from, then
    the checkpoint to resume (which replaces both; its RNG states are read, not set), and last the Hub
    repository, once everything local is known to be fine."""
    args = run.args
    if run.ivon is not None and args.lora_path is not None:
        saved_ivon = find_ivon_state(Path(args.lora_path))
        if saved_ivon is not None:
            load_ivon_state(run, saved_ivon)
        else:
            run.accelerator.print(f"note: {args.lora_path} has no IVON state ({', '.join(IVON_STATE_FILES)}); "
                                  "IVON's Hessian starts at hess_init")
    if run.ivon is not None and not args.eval_only:
        run.start_means = trainable_flat(run)  # a checkpoint's copy replaces it below
    state = load_checkpoint(run, resume) if resume else \
        TrainState(seed=seed, train_batch_size=args.per_device_train_batch_size * run.accelerator.num_processes)
    run.hub_repo = hub_repository(args)
    return state


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
    if not steps_with_metric(run.args):
        if not getattr(run.optimizer, "step_was_skipped", False):  # fp16: an overflow skips the step
            run.scheduler.step()
    if run.adaptive:
        criterion = run.peft_model.peft_config["default"].importance_criterion
        if run.ivon is not None and run.accelerator.num_processes > 1 and criterion == "sensitivity":
            average_gradients(run)
        run.peft_model.base_model.update_and_allocate(state.completed_steps)
    run.optimizer.zero_grad(set_to_none=True)
    state.completed_steps += 1
    return lr


def train(run: Run, state: TrainState, log: JsonlLog) -> None:
    """The training loop, shared by AdamW and IVON, resumable at any update boundary: epochs from the state's
    position, an update after every `gas` micro-batches and at an epoch's end, then log, maybe evaluate, maybe
    checkpoint; an evaluation at each epoch's end. It stops when the plan's updates are done (`plan.finished`)."""
    args, plan, acc = run.args, run.plan, run.accelerator
    gas, n_batches = args.gradient_accumulation_steps, plan.batches_per_epoch
    step_sleep = float(os.environ.get("RUN_GLUE_DEBUG_STEP_SLEEP", "0"))  # lets tests kill a run mid-way
    started = time.time() - state.train_runtime_s
    group_losses: list[float] = []
    bar = tqdm(total=plan.max_train_steps, initial=state.completed_steps, desc="train",
               disable=not acc.is_local_main_process)
    try:
        for epoch in range(state.epoch, plan.num_epochs):
            run.model.train()
            # Global batches, the same on every process; each process trains on its shard of each.
            batches = epoch_batches(len(run.train_dataset), args.per_device_train_batch_size * acc.num_processes,
                                    state.seed, epoch)
            shards = [shard_batch(b, acc.process_index, acc.num_processes) for b in batches]
            for i, batch in _batches_left(run, state, [idx for idx, _ in shards[state.batches_done:]]):
                group_start = i - i % gas
                # DDP all-reduces gradients only at the accumulation boundary; IVON never (it syncs in step()).
                boundary = (i + 1) % gas == 0 or i + 1 == n_batches
                try:
                    loss = forward_backward(run, batch, min(gas, n_batches - group_start), weight=shards[i][1],
                                            sync=boundary and run.ivon is None)
                except TrainingError as e:
                    last = complete_checkpoints(run.out)
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
                    acc.log({k: v for k, v in record.items() if k != "step"}, step=state.completed_steps)
                if step_sleep:
                    time.sleep(step_sleep)
                if args.eval_steps and epoch >= args.eval_after_epochs and \
                        state.completed_steps % args.eval_steps == 0:
                    run_eval(run, state, log, epoch + state.batches_done / n_batches)
                state.train_runtime_s = time.time() - started
                # After the eval: the checkpoint then holds the RNG state the next update starts from.
                if args.checkpointing_steps not in (None, "epoch") and \
                        state.completed_steps % int(args.checkpointing_steps) == 0:
                    save_checkpoint(run, state)
            if state.last_eval_step != state.completed_steps:
                run_eval(run, state, log, epoch + state.batches_done / n_batches)
            log.write({"step": state.completed_steps, "epoch": epoch + 1,
                       "epoch_train_loss": state.epoch_loss_sum / max(state.epoch_loss_count, 1)})
            state.epoch, state.batches_done, state.epoch_loss_sum, state.epoch_loss_count = epoch + 1, 0, 0.0, 0
            state.train_runtime_s = time.time() - started
            if args.checkpointing_steps == "epoch":
                save_checkpoint(run, state)
            if plan.finished(state.completed_steps):
                break
    finally:
        bar.close()  # before any error message, so that it is the last line on stderr


def _batches_left(run: Run, state: TrainState, batch_sampler: list[list[int]]) -> Iterator[tuple[int, dict]]:
    """(index in the epoch, micro-batch on the device) from the state's position for as long as the plan has
    updates left: none when resumed from the final checkpoint, and none after the last update."""
    batches = iter(make_loader(run.train_dataset, run.collator, batch_sampler=batch_sampler))
    i = state.batches_done
    while not run.plan.finished(state.completed_steps):
        batch = next(batches, None)
        if batch is None:
            return
        yield i, {k: v.to(run.accelerator.device) for k, v in batch.items()}
        i += 1


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
    if steps_with_metric(run.args) and run.scheduler:
        run.scheduler.step(results[primary])  # mode "max": every primary metric is better higher
    return results


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run the script; returns the exit status: 0 ok (or the run had already finished), 1 training failed, 2 bad
    input or an output folder that cannot be written, EXIT_BUSY (75) the output folder is in use by another run.

    Under a distributed launch every process runs this; all of them validate the same flags and data, so a bad
    input stops each with status 2 (reported once, by rank 0) before any of them waits for another. Only the main
    process looks at, locks and writes the output folder, and it tells the others what it found (`agree`), so
    that they stop with it instead of waiting. Each process leaves the process group last, after `_main`'s objects
    (the DistributedDataParallel model among them) are gone. The folder's lock is released when this returns, and
    by the OS when the process dies.
    """
    lock = OutputLock()
    try:
        return _main(argv, lock)
    except AlreadyFinished as e:
        if is_main_launch():
            print(e, file=sys.stderr)
        return 0
    except (UsageError, OutputDirBusy) as e:
        if is_main_launch():
            print(f"run_glue_no_trainer.py: error: {e}", file=sys.stderr)
        return EXIT_BUSY if isinstance(e, OutputDirBusy) else 2
    finally:
        lock.release()
        leave_process_group()  # after _main's frame, which held the model, is gone


def _main(argv: list[str] | None, lock: OutputLock) -> int:
    """main()'s steps: arguments, setup, output folder, training or evaluation, outputs, Hub."""
    args = parse_args(argv)
    settings.validate_args(args)
    settings.check_settings(args)
    run, state, resume = setup(args, settings.resolve(args), lock)
    acc = run.accelerator
    log = prepare_output_dir(run, state, resume, lock)
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
        stop_together()
        if acc.is_main_process:
            print(f"run_glue_no_trainer.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the log on a full disk (checkpoints report their own errors)
        raise output_error(run.out, e) from None
    if os.environ.get("RUN_GLUE_DEBUG_DUMP_DIR"):
        debug_dump(run, state, Path(os.environ["RUN_GLUE_DEBUG_DUMP_DIR"]))
    error = None
    if acc.is_main_process:
        try:
            results = save_outputs(run, state)
        except OSError as e:
            error = output_error(run.out, e)
        else:
            if run.adaptive:
                kept = run.peft_model.base_model.kept_ranks()
                width = max(map(len, kept), default=0)
                acc.print(f"final rank allocation ({sum(kept.values())} triplets kept):\n" +
                          "\n".join(f"  {name:<{width}}  {r}" for name, r in kept.items()))
            acc.print("results: " + json.dumps({k: v for k, v in results.items() if k.startswith("eval_")}))
    agree(acc, error)  # outputs that could not be written stop every process; the main process says so
    stop_together()  # no process exits before the outputs are complete
    if args.with_tracking:
        acc.end_training()  # ends the trackers
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
