"""Which examples each update sees: the order of an epoch, and each process's share of a batch.

The order comes from a private generator per (seed, epoch), never from the global RNG, so that a resumed run
sees exactly the batches an uninterrupted one would, and dropout and IVON noise do not depend on the loader.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader


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


def make_loader(dataset, collator, batch_sampler=None, batch_size=None) -> DataLoader:
    """A DataLoader of `dataset` in the order of `batch_sampler` (lists of indices), or in order by `batch_size`."""
    # A private generator: iterating a DataLoader otherwise draws its base seed from the global RNG,
    # which would shift dropout/IVON noise between an interrupted and an uninterrupted run.
    sizing = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size}
    return DataLoader(dataset, collate_fn=collator, generator=torch.Generator().manual_seed(0), **sizing)

