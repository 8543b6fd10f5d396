"""Cost of one IVON training cycle relative to one AdamW step, at 1e5, 1e6 and 1e7 parameters.

IVON cycle = ``sampled_params(train=True)`` (draw + restore, gradients assigned instead of a backward)
+ ``step()``; AdamW = ``torch.optim.AdamW(foreach=True).step()`` on the same shapes. Also timed: the
Gaussian draw alone (``normal_`` of as many elements from the global generator), which IVON must make
exactly as ivon-opt does to stay bit-identical, so ``randn / AdamW`` is a floor under ``IVON / AdamW``.
The three are timed alternately in one run and the median of ``--repeats`` is reported, so machine noise
hits them alike.

    .venv/bin/python bench/ivon_step.py [--threads 1] [--repeats 9] [--sizes 1e5 1e6 1e7] [--clock cpu|wall]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import ivon


def shapes_for(n: int) -> list[tuple[int, ...]]:
    """A transformer-block-like mix for about ``n`` parameters: d×d and 3d×d weights, two biases."""
    d = round((n / 4) ** 0.5)
    return [(d, d), (3 * d, d), (d,), (3 * d,)]


def make(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    grads = [torch.randn(*s, generator=g) for s in shapes]
    return params, grads


def time_once(fn, clock) -> float:
    start = clock()
    fn()
    return clock() - start


def bench(n: int, repeats: int, clock=time.process_time) -> tuple[int, float, float, float]:
    shapes = shapes_for(n)
    ivon_params, grads = make(shapes, 0)
    adam_params, adam_grads = make(shapes, 0)
    opt = ivon.IVON(ivon_params, lr=0.1, ess=1e4)
    adamw = torch.optim.AdamW(adam_params, lr=1e-3, foreach=True)
    for p, g in zip(adam_params, adam_grads):
        p.grad = g

    def ivon_cycle():
        with opt.sampled_params(train=True):
            for p, g in zip(ivon_params, grads):
                p.grad = g  # stands in for backward()
        opt.step()

    numel = sum(p.numel() for p in ivon_params)
    noise = torch.empty(numel)
    times: dict[str, list[float]] = {"ivon": [], "adam": [], "randn": []}
    for i in range(repeats + 1):  # the first round warms up (allocations, lazy state)
        t_ivon, t_adam = time_once(ivon_cycle, clock), time_once(adamw.step, clock)
        t_randn = time_once(noise.normal_, clock)
        if i:
            times["ivon"].append(t_ivon)
            times["adam"].append(t_adam)
            times["randn"].append(t_randn)
    med = {k: statistics.median(v) for k, v in times.items()}
    return numel, med["ivon"], med["adam"], med["randn"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument(
        "--clock", choices=["cpu", "wall"], default="cpu",
        help="cpu: process CPU time (default; stable on a shared machine), wall: elapsed time",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.clock} time, median of {args.repeats}")
    print(f"{'params':>10} {'IVON ms':>9} {'AdamW ms':>9} {'randn ms':>9} {'IVON/AdamW':>11} {'randn/AdamW':>12}")
    for n in args.sizes:
        repeats = args.repeats if n < 5e6 else max(3, args.repeats // 2)
        numel, t_ivon, t_adam, t_randn = bench(int(n), repeats, clock)
        print(
            f"{numel:>10} {t_ivon * 1e3:>9.2f} {t_adam * 1e3:>9.2f} {t_randn * 1e3:>9.2f} "
            f"{t_ivon / t_adam:>11.2f} {t_randn / t_adam:>12.2f}"
        )


if __name__ == "__main__":
    main()
