"""Cost of each explanation method through the service, beside a plain prediction.

Starts `python -m service` on a free loopback port with the given model store,
then sends the same image round-robin to /predictions/<model>, to
/explanations/<model>?methods=<m> for every image method and to
/heatmaps/<model>?method=<m> for activation and gradcam (interleaved, so every
call sees the same machine noise), takes the median of --calls requests each,
and prints and writes the ratios call / prediction.

    .venv/bin/python bench/explain.py [--model-store model_store] [--calls 25]
    .venv/bin/python bench/explain.py --build-tiny --image-size 640x427

--build-tiny packs the tests' TorchServe-standard image_classifier archive
(tests/torchserve_archives.py: a small ResNet-like model, 256/224 ImageNet
preprocessing) into a temporary store and measures it as model "tiny".
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from service.explain import methods_for  # noqa: E402
from training.shapes import make_shapes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--model", default="cnn", help="the model to measure (default cnn)")
    parser.add_argument(
        "--build-tiny",
        action="store_true",
        help="measure the tests' TorchServe-standard archive (model 'tiny', built in a temp store)",
    )
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument(
        "--image-size",
        "--size",
        type=_image_size,
        default=(224, 224),
        help="test image size in pixels: SIDE or WIDTHxHEIGHT (default 224)",
    )
    parser.add_argument(
        "--methods", help="comma-separated image methods to measure (default: every one)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON results (default bench/results/explain[-MODEL].json)"
    )
    parser.add_argument("--readme", type=Path, default=Path("bench/README.md"))
    args = parser.parse_args()
    if not args.build_tiny:
        run(args)
        return
    from tests.torchserve_archives import build

    with tempfile.TemporaryDirectory(prefix="glimpse-bench-") as workdir:
        args.model = "tiny"
        args.model_store = build(Path(workdir), "tiny").parent
        run(args)


def run(args: argparse.Namespace) -> None:
    """Serve `args.model` from `args.model_store`, measure every case, write the report."""
    suffix = "" if args.model == "cnn" else f"-{args.model}"
    args.out = args.out or Path(f"bench/results/explain{suffix}.json")
    methods = args.methods.split(",") if args.methods else methods_for("image")
    image = Image.fromarray(make_shapes(1, seed=4242).images[0]).resize(args.image_size)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    body = buffer.getvalue()
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--model-store",
            str(args.model_store),
            "--models",
            args.model,
            "--http-port",
            str(port),
            "--no-grpc",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(base, server)
        model = args.model
        cases = {"predictions": f"{base}/predictions/{model}"}
        for method in methods:
            cases[method] = f"{base}/explanations/{model}?methods={method}&overlay=false"
            cases[f"{method} + overlay"] = f"{base}/explanations/{model}?methods={method}"
        for method in ("activation", "gradcam"):
            if method in methods:
                cases[f"/heatmaps {method}"] = f"{base}/heatmaps/{model}?method={method}"
        times = _measure(cases, body, args.calls)
        delta = None
        if "integrated_gradients" in methods:
            ig = httpx.post(cases["integrated_gradients"], content=body, timeout=120).json()
            delta = ig["explanations"]["integrated_gradients"]["convergence_delta"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    medians = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    report = _table(medians, args)
    if delta is not None:
        report += (
            f"\n\nintegrated_gradients at its default 50 steps: convergence delta {delta:.2e} "
            "(logit units, this image)"
        )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "model": args.model,
                "image_size": list(args.image_size),
                "median_ms": medians,
                "calls": args.calls,
                "ig_convergence_delta": delta,
            },
            indent=2,
        )
    )
    _write_readme(args.readme, report, "" if args.model == "cnn" else f"{args.model} ")


def _write_readme(readme: Path, report: str, key: str = "") -> None:
    """Replace the text between this model's markers in bench/README.md
    (`<!-- explain.py begin -->` for cnn, `<!-- explain.py tiny begin -->` for tiny, ...);
    append the markers first when the file has none."""
    begin, end = f"<!-- explain.py {key}begin -->", f"<!-- explain.py {key}end -->"
    text = readme.read_text() if readme.exists() else ""
    if begin not in text:
        text = f"{text}\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    stamp = time.strftime("%Y-%m-%d")
    command = " ".join(["python bench/explain.py", *sys.argv[1:]])
    readme.write_text(f"{head}{begin}\nMeasured {stamp} by `{command}`:\n\n{report}\n{end}{tail}")


def _measure(cases: dict[str, str], body: bytes, calls: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cases}
    with httpx.Client(timeout=120) as client:
        for url in cases.values():  # warm up every path once
            client.post(url, content=body).raise_for_status()
        for _ in range(calls):
            for name, url in cases.items():
                started = time.perf_counter()
                client.post(url, content=body).raise_for_status()
                times[name].append(time.perf_counter() - started)
    return times


def _table(medians: dict[str, float], args: argparse.Namespace) -> str:
    plain = medians["predictions"]
    width, height = args.image_size
    lines = [
        f"model `{args.model}`, image {width}x{height} PNG, median of {args.calls} calls each, "
        "interleaved",
        "",
        "| call | median ms | ratio to /predictions |",
        "|---|---|---|",
    ]
    for name, ms in medians.items():
        lines.append(f"| {name} | {ms:.1f} | {ms / plain:.2f} |")
    return "\n".join(lines)


def _image_size(text: str) -> tuple[int, int]:
    """ "224" -> (224, 224); "640x427" -> (640, 427): (width, height)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"SIDE or WIDTHxHEIGHT, not {text!r}")
    width, height = int(parts[0]), int(parts[-1])
    return width, height


def _wait(base: str, server: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with code {server.returncode}")
        try:
            if httpx.get(f"{base}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise TimeoutError("the service did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
