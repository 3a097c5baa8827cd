"""The fit loop both models share: AdamW with weight decay, a one-cycle schedule, a progress bar."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

Batch = tuple[torch.Tensor, torch.Tensor]
T = TypeVar("T")


def epoch_batches(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    take: Callable[[torch.Tensor], T],
    whole: bool = False,
) -> tuple[Callable[[int], Iterator[T]], int]:
    """`batches(epoch)` for `fit_one_cycle`, and the steps per epoch: each epoch a fresh
    permutation of `n` samples from `generator`, cut into slices of `batch_size` (the last
    may be shorter; with `whole`, only whole ones, at least one), each slice's indices
    turned into a batch by `take`."""
    steps = max(1, n // batch_size) if whole else math.ceil(n / batch_size)

    def batches(epoch: int) -> Iterator[T]:
        order = torch.randperm(n, generator=generator)
        for i in range(steps):
            yield take(order[i * batch_size : (i + 1) * batch_size])

    return batches, steps


def fit_one_cycle(
    model: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    epochs: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    desc: str = "fit",
    threads: int | None = None,
    groups: list[tuple[list[nn.Parameter], float]] | None = None,
) -> list[float]:
    """Train `model` in place; `batches(epoch)` yields (inputs, targets). Returns epoch losses.

    `threads` sets torch's intra-op threads for this fit only (None: leave them as they are).
    `groups` (parameters, peak rate) replaces `lr` with one rate per parameter group
    (discriminative learning rates); parameters left out of every group are not trained.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        groups = groups or [(list(model.parameters()), lr)]
        return _fit(model, batches, steps_per_epoch, epochs, loss_fn, groups, weight_decay, desc)
    finally:
        torch.set_num_threads(previous)


def _fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    steps_per_epoch: int,
    epochs: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    groups: list[tuple[list[nn.Parameter], float]],
    weight_decay: float,
    desc: str,
) -> list[float]:
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": lr} for params, lr in groups], weight_decay=weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[lr for _, lr in groups],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
    )
    losses: list[float] = []
    with tqdm(total=epochs * steps_per_epoch, desc=desc, unit="batch") as bar:
        for epoch in range(epochs):
            model.train()
            total, count = 0.0, 0
            for inputs, targets in batches(epoch):
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs), targets)
                loss.backward()
                optimizer.step()
                schedule.step()
                total, count = total + loss.item() * len(targets), count + len(targets)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / count:.4f}")
            losses.append(total / max(count, 1))
    model.eval()
    return losses
