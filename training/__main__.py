"""`python -m training {cnn,tabular,all,archive,digits,finetune,lr-find,evaluate,tabular-eval}`:
build archives into model_store/, and study them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cnn = sub.add_parser("cnn", help="train the image classifier and write cnn.mar")
    cnn.add_argument(
        "--data", type=Path, help="ImageFolder-style directory (default: generated shapes)"
    )
    cnn.add_argument("--epochs", type=int, default=8)
    cnn.add_argument("--n-train", type=int, default=4000, help="generated training images")
    cnn.add_argument("--out", type=Path, default=Path("model_store"))
    cnn.add_argument("--name", default="cnn")
    cnn.add_argument(
        "--sizes",
        type=sizes_list,
        default=(),
        help="progressive resizing: train at each size in turn, e.g. 24,48 (--epochs split "
        "equally, the remainder to the largest; the archive serves the last size)",
    )
    cnn.add_argument("--lr", type=learning_rate, default=None, help="peak rate, or auto (lr-find)")
    tabular = sub.add_parser("tabular", help="train the tabular model and write tabular.mar")
    tabular.add_argument("--csv", type=Path, help="CSV file (default: generated Rossmann data)")
    tabular.add_argument("--cat", nargs="+", default=[], help="categorical columns of the CSV")
    tabular.add_argument("--cont", nargs="+", default=[], help="continuous columns of the CSV")
    tabular.add_argument("--date", nargs="+", default=[], help="date columns of the CSV")
    tabular.add_argument("--target", default="Sales", help="target column of the CSV")
    tabular.add_argument("--epochs", type=int, default=15)
    tabular.add_argument("--out", type=Path, default=Path("model_store"))
    tabular.add_argument("--name", default="tabular")
    tabular.add_argument(
        "--lr", type=learning_rate, default=None, help="peak rate, or auto (lr-find)"
    )
    both = sub.add_parser("all", help="build cnn.mar, then tabular.mar, with the defaults")
    both.add_argument("--out", type=Path, default=Path("model_store"))
    tabular_eval = sub.add_parser("tabular-eval", help="score a tabular archive against the truth")
    tabular_eval.add_argument(
        "archive", type=Path, nargs="?", default=Path("model_store/tabular.mar")
    )
    tabular_eval.add_argument("-n", type=int, default=200, help="held-out rows to explain")
    tabular_eval.add_argument(
        "--delta-tol",
        type=float,
        default=1e-4,
        help="IG doubles its steps until |convergence delta| <= this (0: fixed 50 steps)",
    )
    evaluate = sub.add_parser("evaluate", help="score an image archive through the serving runtime")
    evaluate.add_argument("archive", type=Path, nargs="?", default=Path("model_store/cnn.mar"))
    evaluate.add_argument("-n", type=int, default=200, help="held-out generated images")
    evaluate.add_argument(
        "--out", type=Path, default=Path("docs"), help="where evaluation.md and gallery.png go"
    )
    evaluate.add_argument(
        "--data",
        type=Path,
        help="ImageFolder-style directory: write only the interpretation reports, on its images",
    )
    evaluate.add_argument(
        "--completeness-n", type=int, default=50, help="images for the IG completeness table"
    )
    from training.habits_cli import add_habit_commands

    add_habit_commands(sub)
    user = sub.add_parser(
        "archive",
        help="pack your own trained image classifier (state_dict or TorchScript) as a .mar",
        description="Pack a trained image classifier into a glimpse .mar without retraining: "
        "--model-file + --weights (a state_dict), or --torchscript.",
    )
    from training.user_archive import add_arguments

    add_arguments(user)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.command == "cnn":
        from training.image import ImageConfig, train_cnn

        config = ImageConfig(
            data=args.data, out=args.out, name=args.name, epochs=args.epochs, n_train=args.n_train
        )
        config.sizes, config.lr_auto = args.sizes, args.lr == "auto"
        config.lr = args.lr if isinstance(args.lr, float) else config.lr
        print(f"wrote {train_cnn(config)}")
    elif args.command == "tabular":
        from training.tabular import TabularConfig, train_tabular

        if args.csv is not None and not (args.cat or args.cont or args.date):
            parser.error("--csv needs its columns: --cat ... --cont ... --date ... --target ...")
        table_config = TabularConfig(
            csv=args.csv,
            cat=args.cat,
            cont=args.cont,
            date=args.date,
            target=args.target,
            epochs=args.epochs,
            out=args.out,
            name=args.name,
        )
        table_config.lr_auto = args.lr == "auto"
        table_config.lr = args.lr if isinstance(args.lr, float) else table_config.lr
        print(f"wrote {train_tabular(table_config)}")
    elif args.command == "all":
        from training.image import ImageConfig, train_cnn
        from training.tabular import TabularConfig, train_tabular

        print(f"wrote {train_cnn(ImageConfig(out=args.out))}")
        print(f"wrote {train_tabular(TabularConfig(out=args.out))}")
    elif args.command == "tabular-eval":
        from training.evaluate_tabular import evaluate_tabular, format_report

        tol = args.delta_tol or None
        print(format_report(evaluate_tabular(args.archive, args.n, delta_tol=tol)))
    elif args.command == "evaluate" and args.data is not None:
        from training.reports import report_folder

        print(report_folder(args.archive, args.data, args.n, args.out))
    elif args.command == "evaluate":
        from training.evaluate import evaluate_archive

        print(evaluate_archive(args.archive, args.n, args.out, args.completeness_n))
    elif args.command == "archive":
        from training.user_archive import run

        run(args)
    elif args.command in HABIT_COMMANDS:
        from training.habits_cli import run_habit

        run_habit(args)
    print(f"done in {time.perf_counter() - started:.0f} s")


def sizes_list(text: str) -> tuple[int, ...]:
    """`24,48` -> (24, 48): image sizes in pixels, each at least 8."""
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"sizes are comma-separated pixels, e.g. 24,48: {text!r}"
        ) from None
    if not sizes or min(sizes) < 8:
        raise argparse.ArgumentTypeError(f"each size must be at least 8 pixels: {text!r}")
    return sizes


def learning_rate(text: str) -> float | str:
    """A positive rate, or `auto` (run lr-find first and train with its suggestion)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--lr is a positive number or auto, not {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--lr must be positive, not {text!r}")
    return value


HABIT_COMMANDS = ("lr-find", "finetune", "digits")


if __name__ == "__main__":
    main()
