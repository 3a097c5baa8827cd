"""Check lr-find against a sweep: the suggested rate vs the best of 5 fixed rates.

`python scripts/lr_sweep.py {cnn,tabular}` runs the range test, then trains a fresh
model (same seed) for a few epochs at each of 5 peak rates with the one-cycle loop,
and prints a Markdown table of the held-out figures (CNN: cross-entropy and accuracy on
held-out generated shapes; tabular: RMSPE on the later period). Short on purpose
(a shared 2-core machine): the CNN sees 1,000 images for 2 epochs, the tabular model
3 epochs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

CNN_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
TABULAR_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def sweep_cnn(epochs: int, n_train: int) -> list[str]:
    from training.image import ImageConfig, find_lr, load_stage, new_model, normalise, to_tensor
    from training.loop import fit_one_cycle

    config = ImageConfig(n_train=n_train, epochs=epochs)
    stage = load_stage(config, 48)
    torch.manual_seed(0)
    found = find_lr(config, new_model(config, 4), stage)
    lines = [f"lr-find: {found.describe()}", "", "| peak rate | held-out loss | accuracy |"]
    lines.append("|---|---|---|")
    x_test = normalise(to_tensor(stage.test.images), stage.mean, stage.std)
    y_test = torch.from_numpy(stage.test.labels)
    for lr in CNN_RATES:
        torch.manual_seed(0)
        model = new_model(config, 4)
        batches, steps = stage.batches(config.batch_size, torch.Generator().manual_seed(0))
        fit_one_cycle(model, batches, steps, epochs, F.cross_entropy, lr=lr, desc=f"lr {lr:g}")
        with torch.no_grad():
            logits = model(x_test)
        loss = float(F.cross_entropy(logits, y_test))
        accuracy = float((logits.argmax(1) == y_test).float().mean())
        lines.append(f"| {lr:g} | {loss:.4f} | {accuracy:.1%} |")
    return lines


def sweep_tabular(epochs: int) -> list[str]:
    from training.tabular import TabularConfig, build_model, find_lr, fit, predict, prepare, rmspe

    config = TabularConfig(epochs=epochs, gbm=False)
    prepared = prepare(config)
    torch.manual_seed(0)
    model, _ = build_model(prepared.procs, prepared.y_train, config)
    found = find_lr(model, prepared.x_train, prepared.y_train, config)
    lines = [f"lr-find: {found.describe()}", "", "| peak rate | RMSPE, later period |"]
    lines.append("|---|---|")
    target = prepared.valid[prepared.data.target]
    for lr in TABULAR_RATES:
        torch.manual_seed(0)
        model, _ = build_model(prepared.procs, prepared.y_train, config)
        fit(model, prepared.x_train, prepared.y_train, config, lr)
        lines.append(f"| {lr:g} | {rmspe(target, predict(model, prepared.x_valid)):.4f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", choices=["cnn", "tabular"])
    parser.add_argument("--epochs", type=int, help="cnn: 2, tabular: 3")
    parser.add_argument("--n-train", type=int, default=1000, help="cnn: generated images")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.model == "cnn":
        lines = sweep_cnn(args.epochs or 2, args.n_train)
    else:
        lines = sweep_tabular(args.epochs or 3)
    print("\n".join(lines))
    print(f"\n{time.perf_counter() - started:.0f} s; numpy {np.__version__}")


if __name__ == "__main__":
    main()
