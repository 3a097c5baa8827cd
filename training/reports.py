"""Interpretation reports for an image archive, read through the handler that serves it.

`write_reports(handler, data, out)` writes, for labelled images (generated shapes or
an ImageFolder):

- `confusion_matrix.png`: counts of (actual, predicted), and the most-confused pairs
  (in `reports.md`);
- `top_losses.png`: the images with the highest loss (cross-entropy of the true class),
  each with its Grad-CAM overlay for the predicted class, titled predicted / actual /
  loss / probability of the actual class, as fastai's `plot_top_losses(heatmap=True)`;
- `layer_activations.png`: for a few inputs, one column per conv stage: the stage's
  activations averaged over channels, laid over the image (early stages respond to
  edges and colour, later ones to the object);
- `reports.md`: accuracy, the most-confused pairs, the files.

`python -m training evaluate` writes them beside evaluation.md for generated shapes;
`python -m training evaluate ARCHIVE --data DIR` writes only them, for a folder's images
(`DIR/<class>/<image>`; with `DIR/test` or `DIR/valid`, that split).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from service import render
from service.archive import open_archive
from service.explain import build
from service.handlers.image import ImageHandler
from training.imagefolder import load_image_folder
from training.shapes import ShapesData

FILES = ("confusion_matrix.png", "top_losses.png", "layer_activations.png", "reports.md")
TOP_LOSSES = 9
ACTIVATION_ROWS = 4
MAX_STAGES = 6
CELL = 96


def report_folder(archive: Path, root: Path, n: int = 200, out: Path = Path("docs")) -> str:
    """Open `archive`, read up to `n` labelled images of `root` (its test split when it has
    one), write the reports into `out`; returns their summary."""
    with tempfile.TemporaryDirectory() as workdir:
        handler = open_archive(archive, Path(workdir)).handler
        if not isinstance(handler, ImageHandler):
            raise SystemExit(f"{archive} is not an image model")
        data = read_folder(root, handler, n)
        return write_reports(handler, data, out)


def read_folder(root: Path, handler: ImageHandler, n: int) -> ShapesData:
    """The folder's images with labels renumbered as the archive's classes; SystemExit
    naming the folders the archive does not know."""
    size = handler.transform.resize or max(handler.size)
    train, test = load_image_folder(root, size=size)
    has_split = any((root / name).is_dir() for name in ("test", "valid", "val"))
    data = test if has_split and (root / "train").is_dir() else _join(train, test)
    unknown = [c for c in data.classes if c not in handler.classes]
    if unknown:
        raise SystemExit(
            f"{root} has class folders the archive does not know: {unknown}; "
            f"the archive's classes are {handler.classes}"
        )
    labels = np.array([handler.classes.index(data.classes[i]) for i in data.labels])
    keep = np.random.default_rng(0).permutation(len(labels))[:n]
    return ShapesData(data.images[keep], labels[keep], None, tuple(handler.classes))


def _join(a: ShapesData, b: ShapesData) -> ShapesData:
    images = np.concatenate([a.images, b.images])
    return ShapesData(images, np.concatenate([a.labels, b.labels]), None, a.classes)


def write_reports(handler: ImageHandler, data: ShapesData, out: Path) -> str:
    """Write the four files into `out`; returns the Markdown summary (also in reports.md)."""
    out.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(a) for a in data.images]
    inputs = handler.preprocess(images)
    result = handler.infer(inputs)
    probabilities = result.probabilities
    labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
    predicted = probabilities.argmax(dim=1)
    losses = -torch.log(probabilities.gather(1, labels.view(-1, 1)).squeeze(1).clamp_min(1e-12))
    classes = list(handler.classes)
    matrix = confusion(labels.numpy(), predicted.numpy(), len(classes))
    plot_confusion(matrix, classes, out / "confusion_matrix.png")
    top = torch.argsort(losses, descending=True)[: min(TOP_LOSSES, len(images))]
    top_losses(handler, images, inputs, top, predicted, labels, losses, probabilities).save(
        out / "top_losses.png"
    )
    layer_sheet(handler, images[:ACTIVATION_ROWS], inputs[:ACTIVATION_ROWS]).save(
        out / "layer_activations.png"
    )
    accuracy = float((predicted == labels).float().mean())
    summary = "\n".join(
        [
            f"Interpretation reports: n={len(images)}, accuracy {accuracy:.1%}.",
            "",
            "Most-confused pairs (actual → predicted, count):",
            "",
            *(
                [f"- {classes[a]} → {classes[p]}: {c}" for a, p, c in most_confused(matrix)]
                or ["- none: every image is classified correctly"]
            ),
            "",
            "![confusion matrix](confusion_matrix.png)",
            "![top losses with Grad-CAM](top_losses.png)",
            "![activations per conv stage](layer_activations.png)",
        ]
    )
    (out / "reports.md").write_text(summary + "\n")
    return summary + f"\n\nwrote {', '.join(str(out / f) for f in FILES)}"


def confusion(actual: np.ndarray, predicted: np.ndarray, n: int) -> np.ndarray:
    """[n, n] counts: row = actual class, column = predicted class."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (actual, predicted), 1)
    return matrix


def most_confused(matrix: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
    """The `k` largest off-diagonal counts as (actual, predicted, count), largest first."""
    pairs = [
        (a, p, int(matrix[a, p]))
        for a in range(len(matrix))
        for p in range(len(matrix))
        if a != p and matrix[a, p] > 0
    ]
    return sorted(pairs, key=lambda t: (-t[2], t[0], t[1]))[:k]


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = max(3.5, 0.45 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(side, side), dpi=100)
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(classes))
    axes.set_xticks(ticks, classes, rotation=45, ha="right")
    axes.set_yticks(ticks, classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    axes.set_title("confusion matrix")
    high = matrix.max() if matrix.size else 0
    for (a, p), count in np.ndenumerate(matrix):
        colour = "white" if count > high / 2 else "black"
        axes.text(p, a, str(count), ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def top_losses(
    handler: ImageHandler,
    images: list[Image.Image],
    inputs: torch.Tensor,
    top: torch.Tensor,
    predicted: torch.Tensor,
    labels: torch.Tensor,
    losses: torch.Tensor,
    probabilities: torch.Tensor,
) -> Image.Image:
    """A grid of the top-loss images, each with Grad-CAM for its predicted class laid over it."""
    chosen = handler.infer(inputs[top])
    maps = handler.explain(chosen, build("image", "gradcam", {}), predicted[top]).maps
    columns = 3
    rows = max(1, -(-len(top) // columns))
    title = 28
    sheet = Image.new("RGB", (CELL * columns, (CELL + title) * rows), "white")
    draw = ImageDraw.Draw(sheet)
    classes = handler.classes
    for k, i in enumerate(top.tolist()):
        r, c = divmod(k, columns)
        x, y = c * CELL, r * (CELL + title)
        tile = images[i].convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)
        tile = render.overlay(tile, render.normalise(maps[k], False), False, alpha=0.5)
        sheet.paste(tile, (x, y + title))
        actual, guess = classes[int(labels[i])], classes[int(predicted[i])]
        draw.text((x + 2, y + 1), f"{guess[:7]}/{actual[:7]}", fill="black")
        probability = float(probabilities[i, int(labels[i])])
        draw.text((x + 2, y + 13), f"{float(losses[i]):.2f} / {probability:.2f}", fill="black")
    return sheet


def conv_stages(handler: ImageHandler) -> list[str]:
    """One layer per conv stage: the shallowest depth with 2+ spatial layers (glimpse's
    SmallResNet: the stem and each residual block), at most MAX_STAGES, evenly chosen."""
    names = list(handler.layers)  # aliases too: a block's output is its last module's
    by_depth: dict[int, list[str]] = {}
    for name in names:
        by_depth.setdefault(name.count("."), []).append(name)
    stages = next((by_depth[d] for d in sorted(by_depth) if len(by_depth[d]) >= 2), names)
    if len(stages) > MAX_STAGES:
        pick = np.linspace(0, len(stages) - 1, MAX_STAGES).round().astype(int)
        stages = [stages[i] for i in pick]
    return stages


def layer_sheet(
    handler: ImageHandler, images: list[Image.Image], inputs: torch.Tensor
) -> Image.Image:
    """Rows: inputs; columns: the image, then each conv stage's mean activation over it."""
    stages = conv_stages(handler)
    result = handler.infer(inputs, capture=False, layers=stages)
    title = 16
    columns = ["image", *stages]
    sheet = Image.new("RGB", (CELL * len(columns), title + CELL * len(images)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        shape = handler.layers[name].shape if name in handler.layers else None
        label = name if shape is None else f"{name} {shape[1]}x{shape[2]}"
        draw.text((c * CELL + 2, 2), label[:16], fill="black")
    for r, image in enumerate(images):
        tile = image.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)
        sheet.paste(tile, (0, title + r * CELL))
        for c, name in enumerate(stages, start=1):
            activation = result.activations[name][r].float().mean(dim=0).numpy()
            overlay = render.overlay(tile, render.normalise(activation, False), False, 0.6)
            sheet.paste(overlay, (c * CELL, title + r * CELL))
    return sheet
