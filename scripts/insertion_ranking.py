"""Why signed maps are ranked by |value| in the insertion game (docs/evaluation.md).

For integrated_gradients and gradient_shap on held-out shapes it prints the insertion
curve (the target's probability, and its logit) as the most-attributed pixels go back into
the blurred copy: ranked by value, by |value|, and negative pixels first; and a random map's.

Example: ``python scripts/insertion_ranking.py model_store/cnn.mar -n 100``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from service.archive import open_archive
from service.explain import build
from service.handlers.image import ImageHandler
from training.evaluate import EVAL_SEED
from training.faithfulness import STEPS, curve
from training.shapes import make_shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("archive", type=Path, nargs="?", default=Path("model_store/cnn.mar"))
    parser.add_argument("-n", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(args.archive, Path(workdir)).handler
        assert isinstance(handler, ImageHandler)
        data = make_shapes(args.n, seed=EVAL_SEED, size=handler.size[0])
        inputs = handler.preprocess([Image.fromarray(a) for a in data.images])
        result = handler.infer(inputs)
        targets = result.probabilities.argmax(dim=1)
        size = inputs.shape[-2:]
        rankings = {"random map": np.random.default_rng(0).random((args.n, *size))}
        for method in ("integrated_gradients", "gradient_shap"):
            maps = handler.explain(result, build("image", method, {}), targets).maps
            rankings |= {
                f"{method} by value": maps,
                f"{method} by |value|": np.abs(maps),
                f"{method} negative first": -maps,
            }
        for name, scores in rankings.items():
            for logit in (False, True):
                points = curve(handler, inputs, targets, scores, insert=True, logit=logit)
                shown = " ".join(f"{p:.3f}" for p in points[:: STEPS // 5])
                what = "logit" if logit else "probability"
                print(f"{name:<36} {what:<11} AUC {np.mean(points):.3f}  every 20%: {shown}")


if __name__ == "__main__":
    main()
