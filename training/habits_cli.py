"""Command-line parts of `python -m training lr-find | finetune | digits` (see each module)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_habit_commands(sub: Any) -> None:
    """Add the three subcommands to `python -m training`'s subparsers."""
    find = sub.add_parser(
        "lr-find",
        help="learning-rate range test on the cnn or tabular model: a plot and a suggested rate",
    )
    find.add_argument("model", choices=["cnn", "tabular"])
    find.add_argument("--data", type=Path, help="cnn: ImageFolder-style directory")
    find.add_argument("--n-train", type=int, default=4000, help="cnn: generated training images")
    find.add_argument("--csv", type=Path, help="tabular: CSV file (with --cat/--cont/--date)")
    find.add_argument("--cat", nargs="+", default=[])
    find.add_argument("--cont", nargs="+", default=[])
    find.add_argument("--date", nargs="+", default=[])
    find.add_argument("--target", default="Sales")
    find.add_argument("--num", type=int, default=100, help="mini-batches, at most")
    find.add_argument(
        "--rule",
        choices=["minimum", "steepest"],
        default="minimum",
        help="which rule suggests the rate: minimum / 10 (default) or steepest descent",
    )
    find.add_argument(
        "--out", type=Path, default=Path("docs"), help="where lr_find_<model>.png goes"
    )

    tune = sub.add_parser(
        "finetune",
        help="new head for new classes: frozen-body epochs, then unfrozen with discriminative "
        "rates; writes a new .mar",
    )
    tune.add_argument("archive", type=Path, help="an image .mar (glimpse's, or from `archive`)")
    tune.add_argument("--data", type=Path, required=True, help="ImageFolder-style directory")
    tune.add_argument("--name", help="archive name (default: <archive>-<data folder>)")
    tune.add_argument("--out", type=Path, default=Path("model_store"))
    tune.add_argument("--frozen-epochs", type=int, default=1, help="head only, body frozen")
    tune.add_argument("--epochs", type=int, default=4, help="unfrozen, discriminative rates")
    tune.add_argument("--lr", type=float, default=4e-3, help="base rate (fastai fine_tune's)")
    tune.add_argument("--lr-mult", type=float, default=100.0, help="hi / lo of the unfrozen slice")
    tune.add_argument("--batch-size", type=int, default=32)
    tune.add_argument(
        "--scratch",
        action="store_true",
        help="baseline: same architecture from random weights, all layers, "
        "frozen-epochs + epochs at --lr",
    )

    digits = sub.add_parser(
        "digits", help="digits.mar from scikit-learn's bundled handwritten digits (8x8 scans)"
    )
    digits.add_argument("--out", type=Path, default=Path("model_store"))
    digits.add_argument("--name", default="digits")
    digits.add_argument("--epochs", type=int, default=8)
    digits.add_argument("--size", type=int, default=32, help="upsampled input size, pixels")
    digits.add_argument(
        "--subset", type=int, help="use only this many scans (quick builds for tests)"
    )
    digits.add_argument(
        "--folder",
        type=Path,
        help="instead of training: write the same split as DIR/{train,test}/<digit>/*.png",
    )


def run_habit(args: argparse.Namespace) -> None:
    if args.command == "lr-find":
        from training.lr_find import command

        command(args)
    elif args.command == "finetune":
        from training.finetune import FinetuneConfig, FinetuneError, finetune

        config = FinetuneConfig(
            archive=args.archive,
            data=args.data,
            name=args.name,
            out=args.out,
            frozen_epochs=args.frozen_epochs,
            epochs=args.epochs,
            lr=args.lr,
            lr_mult=args.lr_mult,
            batch_size=args.batch_size,
            scratch=args.scratch,
        )
        try:
            print(f"wrote {finetune(config)}")
        except FinetuneError as exc:
            raise SystemExit(f"finetune: {exc}") from None
    elif args.command == "digits" and args.folder is not None:
        from training.digits import save_digits_folder

        print(f"wrote {save_digits_folder(args.folder, args.size)}")
    elif args.command == "digits":
        from training.digits import DigitsConfig, train_digits

        config_d = DigitsConfig(
            out=args.out, name=args.name, epochs=args.epochs, size=args.size, subset=args.subset
        )
        print(f"wrote {train_digits(config_d)}")
