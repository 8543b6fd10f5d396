"""The step plan and the learning-rate schedules: how many updates a run has, and the lr at each.

Every step count is in optimizer updates of the global batch (--per_device_train_batch_size x processes x
--gradient_accumulation_steps micro-batches). `plan_steps` also checks that the custom schedule's phases fit the
run, and `check_budget_schedule` that the AdaLoRA budget schedule does, before the model is loaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math

import torch
from transformers import get_scheduler

from .errors import UsageError

METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")  # stepped with the dev metric after each evaluation


def steps_with_metric(args: argparse.Namespace) -> bool:
    """True when the lr schedule is stepped with the dev metric after each evaluation, not after each update."""
    return args.lr_scheduler_type in METRIC_SCHEDULERS and not args.use_custom_lr_schedule


def metric_scheduler_kwargs(args: argparse.Namespace) -> dict:
    """--lr_scheduler_kwargs for a scheduler stepped with the dev metric: mode "max", since every GLUE primary
    metric is better higher (in "min" mode with the negated metric, a relative threshold counts a tie as an
    improvement, so a flat accuracy never cut the lr)."""
    kwargs = dict(args.lr_scheduler_kwargs or {})
    if kwargs.setdefault("mode", "max") != "max":
        raise UsageError(f"--lr_scheduler_kwargs mode {kwargs['mode']!r}: {args.lr_scheduler_type} is stepped with "
                         "the dev metric, which is better higher; leave mode out (it is \"max\")")
    return kwargs


def upgrade_metric_scheduler_state(state: dict) -> dict:
    """A metric scheduler's state saved before mode "max" (mode "min", stepped with the negated metric): the
    same state in mode "max", so that a resumed run goes on where it stopped."""
    if state.get("mode") != "min":
        return state
    state = dict(state, mode="max")
    for key in ("best", "mode_worse"):  # GreedyLR keeps no mode_worse
        if state.get(key) is not None:
            state[key] = -state[key]
    return state


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


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """How many micro-batches and optimizer updates the run has."""
    batches_per_epoch: int
    updates_per_epoch: int
    max_train_steps: int
    num_epochs: int

    def finished(self, completed_steps: int) -> bool:
        """True once `completed_steps` updates are all the run has: the training loop's one stop condition."""
        return completed_steps >= self.max_train_steps


def plan_steps(args: argparse.Namespace, n_train: int, num_processes: int = 1) -> StepPlan:
    """Count updates and check that the custom LR schedule's phases fit the run (the AdaLoRA budget schedule is
    checked by `check_budget_schedule`, given the adapter's config).

    A batch is global: --per_device_train_batch_size x num_processes examples, split over the processes.
    """
    batches = math.ceil(n_train / (args.per_device_train_batch_size * num_processes))
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    total = args.max_train_steps or args.num_train_epochs * per_epoch
    plan = StepPlan(batches, per_epoch, total, math.ceil(total / per_epoch))
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
        kwargs = metric_scheduler_kwargs(args) if steps_with_metric(args) \
            else args.lr_scheduler_kwargs
        return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps,
                             num_training_steps=plan.max_train_steps, scheduler_specific_kwargs=kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--lr_scheduler_type {args.lr_scheduler_type}: {e} (give its arguments as "
                         "--lr_scheduler_kwargs '{\"name\": value}')") from None

