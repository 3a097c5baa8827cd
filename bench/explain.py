"""Cost of each explanation method through the service, beside a plain prediction.

Starts `python -m service` on a free loopback port with the given model store,
then sends the same image round-robin to /predictions/cnn and to
/explanations/cnn?methods=<m> for every image method (interleaved, so every
method sees the same machine noise), takes the median of --calls requests
each, and prints and writes the ratios method / prediction.

    .venv/bin/python bench/explain.py [--model-store model_store] [--calls 25]
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
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument("--size", type=int, default=224, help="side of the test image in pixels")
    parser.add_argument("--out", type=Path, default=Path("bench/results/explain.json"))
    parser.add_argument("--readme", type=Path, default=Path("bench/README.md"))
    args = parser.parse_args()
    image = Image.fromarray(make_shapes(1, seed=4242).images[0]).resize((args.size, args.size))
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
            "cnn",
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
        _wait(base)
        cases = {"predictions": f"{base}/predictions/cnn"}
        for method in methods_for("image"):
            cases[method] = f"{base}/explanations/cnn?methods={method}&overlay=false"
            cases[f"{method} + overlay"] = f"{base}/explanations/cnn?methods={method}"
        times = _measure(cases, body, args.calls)
        ig = httpx.post(cases["integrated_gradients"], content=body, timeout=120).json()
        delta = ig["explanations"]["integrated_gradients"]["convergence_delta"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    medians = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    report = _table(medians, args) + (
        f"\n\nintegrated_gradients at its default 50 steps: convergence delta {delta:.2e} "
        "(logit units, this image)"
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"median_ms": medians, "calls": args.calls, "ig_convergence_delta": delta}, indent=2
        )
    )
    _write_readme(args.readme, report)


def _write_readme(readme: Path, report: str) -> None:
    """Replace the text between the explain-benchmark markers in bench/README.md."""
    begin, end = "<!-- explain.py begin -->", "<!-- explain.py end -->"
    text = readme.read_text() if readme.exists() else f"{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    stamp = time.strftime("%Y-%m-%d")
    readme.write_text(
        f"{head}{begin}\nMeasured {stamp} by `python bench/explain.py`:\n\n{report}\n{end}{tail}"
    )


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
    lines = [
        f"image {args.size}x{args.size} PNG, median of {args.calls} calls each, interleaved",
        "",
        "| call | median ms | ratio to /predictions |",
        "|---|---|---|",
    ]
    for name, ms in medians.items():
        lines.append(f"| {name} | {ms:.1f} | {ms / plain:.2f} |")
    return "\n".join(lines)


def _wait(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
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
