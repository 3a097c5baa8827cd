"""`python -m training {cnn,tabular,all,evaluate,archive}`: build archives into model_store/."""

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
    tabular = sub.add_parser("tabular", help="train the tabular model and write tabular.mar")
    tabular.add_argument("--csv", type=Path, help="CSV file (default: generated Rossmann data)")
    tabular.add_argument("--cat", nargs="+", default=[], help="categorical columns of the CSV")
    tabular.add_argument("--cont", nargs="+", default=[], help="continuous columns of the CSV")
    tabular.add_argument("--date", nargs="+", default=[], help="date columns of the CSV")
    tabular.add_argument("--target", default="Sales", help="target column of the CSV")
    tabular.add_argument("--epochs", type=int, default=15)
    tabular.add_argument("--out", type=Path, default=Path("model_store"))
    tabular.add_argument("--name", default="tabular")
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
        "--completeness-n", type=int, default=50, help="images for the IG completeness table"
    )
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
    elif args.command == "evaluate":
        from training.evaluate import evaluate_archive

        print(evaluate_archive(args.archive, args.n, args.out, args.completeness_n))
    elif args.command == "archive":
        from training.user_archive import run

        run(args)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
