"""Leslie Smith's learning-rate range test, the way fastai's `lr_find` runs it.

The learning rate rises exponentially from `start` to `end` over `num` mini-batches
(about 100); the loss is smoothed as it goes (an exponential moving average with
bias correction, beta 0.98); the test stops early once the smoothed loss exceeds 4x
its minimum (or is no longer finite). Two rules read the curve:

- steepest descent: the rate where the smoothed loss falls fastest against log(lr),
  looked for before the minimum (the first 10 points are skipped as noise);
- minimum / 10: a tenth of the rate at the smoothed loss's minimum.

The suggestion follows `rule`: "minimum" (the default) gives the minimum / 10;
"steepest" gives the steepest-descent rate when the curve has one (it falls by at
least 10 % over at least 3 points before its minimum), else the minimum / 10.
`LRFindResult.rule` says which rule gave the suggestion. The default is measured: on
both default models the minimum / 10 lands within 3x of the best of a 5-rate sweep,
while the steepest point is far too low (the tabular loss falls fastest in its first
batches, when the rate is ~1e-4) or is noise (the CNN's curve stays flat until it
blows up); docs/training.md has the tables.
The model's weights, the optimizer's state (and torch's global RNG state) are
restored afterwards, so the test leaves no trace on the model it measured.

Example: ``result = lr_find(model, batches, F.cross_entropy); result.suggestion``
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.loop import Batch

START, END, NUM = 1e-7, 10.0, 100
BETA = 0.98  # fastai's smoothing
STOP_FACTOR = 4.0  # stop when the smoothed loss exceeds 4x its minimum
SKIP_START = 10  # the first points: the moving average has seen few batches
MIN_FALL = 0.1  # steepest descent needs a curve that falls by 10 % before its minimum


@dataclass
class LRFindResult:
    """Per mini-batch: the rate, the raw and the smoothed loss; the two rules' rates."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    minimum: float = math.nan  # the rate at the smoothed minimum, divided by 10
    steepest: float | None = None
    suggestion: float = math.nan
    rule: str = ""
    stopped_early: bool = False

    def describe(self) -> str:
        steepest = f"{self.steepest:.2e}" if self.steepest is not None else "none"
        return (
            f"suggested learning rate {self.suggestion:.2e} ({self.rule}); "
            f"steepest descent {steepest}, minimum / 10 {self.minimum:.2e}; "
            f"{len(self.lrs)} mini-batches"
            + (", stopped when the loss passed 4x its minimum" if self.stopped_early else "")
        )


def lr_find(
    model: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    start: float = START,
    end: float = END,
    num: int = NUM,
    weight_decay: float = 1e-2,
    threads: int | None = None,
    desc: str = "lr-find",
    rule: str = "minimum",
) -> LRFindResult:
    """Run the range test on `model` (batches(epoch) as for `fit_one_cycle`, cycled as needed).

    `optimizer` defaults to AdamW over the model's parameters. Whatever happens, the weights
    (and buffers), the optimizer's state and torch's RNG state are put back as they were.
    """
    saved_model = copy.deepcopy(model.state_dict())
    optimizer = optimizer or torch.optim.AdamW(
        model.parameters(), lr=start, weight_decay=weight_decay
    )
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = torch.get_rng_state()
    was_training = model.training
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    result = LRFindResult()
    try:
        _run(model, _cycle(batches), loss_fn, optimizer, start, end, num, result, desc)
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        torch.set_rng_state(saved_rng)
        model.train(was_training)
        torch.set_num_threads(previous_threads)
    suggest(result, rule)
    return result


def _cycle(batches: Callable[[int], Iterable[Batch]]) -> Iterator[Batch]:
    epoch = 0
    while True:
        yield from batches(epoch)
        epoch += 1


def _run(
    model: nn.Module,
    batches: Iterator[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    start: float,
    end: float,
    num: int,
    result: LRFindResult,
    desc: str,
) -> None:
    model.train()
    average, best = 0.0, math.inf
    for i in tqdm(range(num), desc=desc, unit="batch"):
        lr = start * (end / start) ** (i / max(num - 1, 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        value = float(loss.item())
        if not math.isfinite(value):
            result.stopped_early = True
            break
        loss.backward()
        optimizer.step()
        average = BETA * average + (1 - BETA) * value
        smoothed = average / (1 - BETA ** (i + 1))
        result.lrs.append(lr)
        result.losses.append(value)
        result.smoothed.append(smoothed)
        best = min(best, smoothed)
        if i > 0 and smoothed > STOP_FACTOR * best:
            result.stopped_early = True
            break


RULES = ("minimum", "steepest")


def suggest(result: LRFindResult, rule: str = "minimum") -> None:
    """Fill in the two rules' rates and the suggestion by `rule` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    if not result.lrs:
        raise ValueError("the range test recorded no finite loss: the model diverges at once")
    lrs = np.array(result.lrs)
    smoothed = np.array(result.smoothed)
    skip = SKIP_START if len(lrs) > SKIP_START + 5 else 0
    lowest = skip + int(np.argmin(smoothed[skip:]))
    result.minimum = float(lrs[lowest] / 10)
    fall = smoothed[skip] - smoothed[lowest]
    if lowest - skip >= 3 and fall >= MIN_FALL * abs(smoothed[skip]):
        slope = np.gradient(smoothed[skip : lowest + 1], np.log(lrs[skip : lowest + 1]))
        result.steepest = float(lrs[skip + int(np.argmin(slope))])
    if rule == "steepest" and result.steepest is not None:
        result.suggestion, result.rule = result.steepest, "steepest descent of the smoothed loss"
    else:
        result.suggestion, result.rule = result.minimum, "minimum of the smoothed loss / 10"


def plot(result: LRFindResult, path: Path, title: str = "learning-rate range test") -> Path:
    """Raw and smoothed loss against the rate (log scale), both rules marked; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.plot(result.lrs, result.losses, color="0.75", linewidth=0.8, label="loss")
    axes.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
    if result.steepest is not None:
        axes.axvline(result.steepest, color="C1", linestyle="--", label="steepest descent")
    axes.axvline(result.minimum, color="C2", linestyle=":", label="minimum / 10")
    axes.plot(
        [result.suggestion],
        [float(np.interp(np.log(result.suggestion), np.log(result.lrs), result.smoothed))],
        "o",
        color="C3",
        label=f"suggested {result.suggestion:.1e}",
    )
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("loss")
    top = min(max(result.smoothed), 4 * min(result.smoothed))
    axes.set_ylim(min(result.smoothed) * 0.9, top * 1.1 if top > 0 else None)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def command(args: Any) -> LRFindResult:
    """`python -m training lr-find {cnn,tabular}`: run the test, write the plot, print the rate."""
    if args.model == "cnn":
        from training.image import SIZE, ImageConfig, find_lr, load_stage, new_model

        config = ImageConfig(data=args.data, n_train=args.n_train)
        torch.manual_seed(config.seed)
        stage = load_stage(config, SIZE)
        network = new_model(config, len(stage.train.classes))
        result = find_lr(config, network, stage, args.num, args.rule)
    else:
        from training.tabular import TabularConfig, build_model, prepare
        from training.tabular import find_lr as find_tabular_lr

        table = TabularConfig(
            csv=args.csv, cat=args.cat, cont=args.cont, date=args.date, target=args.target
        )
        if table.csv is not None and not (table.cat or table.cont or table.date):
            raise SystemExit("lr-find: --csv needs its columns: --cat ... --cont ... --date ...")
        torch.manual_seed(table.seed)
        prepared = prepare(table)
        model, _ = build_model(prepared.procs, prepared.y_train, table)
        result = find_tabular_lr(
            model, prepared.x_train, prepared.y_train, table, args.num, args.rule
        )
    path = plot(result, args.out / f"lr_find_{args.model}.png", f"lr-find: {args.model}")
    print(result.describe())
    print(f"wrote {path}")
    return result
