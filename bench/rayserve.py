"""Ray Serve against glimpse alone: req/s at 1 and 2 replicas, and the cost of Ray's proxy.

One command starts a local Ray cluster in this process with two Serve applications of
service/ray_app.py on one HTTP port, `/r1` (1 replica) and `/r2` (2 replicas), and
`python -m service` on its own port, all serving copies of the same archive. It then runs
wrk (or, without wrk, an asyncio + httpx client) closed-loop on POST /predictions/<model>
with one 256x256 PNG, and GET /ping at concurrency 1, against the three in alternating
rounds, and prints the medians (min-max over rounds). Everything it started is stopped at
the end: Serve, the cluster (and any of its processes left after ray.shutdown), glimpse.

    .venv/bin/python bench/rayserve.py --archive model_store/cnn.mar
    .venv/bin/python bench/rayserve.py --archive model_store/cnn.mar --rounds 1 --seconds 3  # smoke

Every replica and glimpse alone use 1 torch thread, and each replica asks Ray for half a CPU
(three replicas on a 2-CPU cluster). The load generator, Ray's proxy and the servers share
the machine's cores: on 2 cores, a second replica has no core of its own to run on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
from _servers import Glimpse, free_ports, model_name  # noqa: E402
from serve import Load, run_python_http, run_wrk, wrk_script  # noqa: E402

PING_SCRIPT = 'wrk.method = "GET"\n'


@dataclass
class Result:
    case: str  # glimpse | ray-1 | ray-2
    load: str  # predictions | ping
    concurrency: int
    round: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def image_png(size: int, path: Path) -> bytes:
    """A fixed noise image of size x size pixels, as PNG bytes, also written to `path`."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    image.save(path, format="PNG")
    return path.read_bytes()


def start_ray(store: Path, port: int, replicas: list[int], temp_dir: Path) -> dict[int, int]:
    """A local Ray cluster with one Serve application per replica count, at /r<count>;
    returns the processes it started (pid -> start time)."""
    import ray
    from ray import serve

    from service.config import Settings
    from service.ray_app import Scaling, application, processes_below, serve_logging

    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(temp_dir))
    started = processes_below(os.getpid())
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = Settings(model_store=store, http_port=port, torch_threads=1, grpc=False)
    for count in replicas:
        scaling = Scaling(replicas=count, replica_cpus=0.5)
        app = application(settings, scaling)
        serve.run(
            app, name=f"r{count}", route_prefix=f"/r{count}", logging_config=serve_logging(settings)
        )
    return started


def stop_ray(started: dict[int, int]) -> None:
    import ray
    from ray import serve

    from service.ray_app import stop_leftovers

    serve.shutdown()  # type: ignore[no-untyped-call]
    ray.shutdown()
    stop_leftovers(started)


def measure(
    run: Callable[[str, int], Load], urls: dict[str, str], args: argparse.Namespace
) -> list[Result]:
    """Alternating rounds: every case at every concurrency, the case order rotated per round."""
    results = []
    cases = list(urls)
    for index in range(args.rounds):
        order = cases[index % len(cases) :] + cases[: index % len(cases)]
        for concurrency in args.concurrency:
            for case in order:
                load = run(f"{urls[case]}/predictions/{args.model}", concurrency)
                results.append(Result(case, "predictions", concurrency, index, *_figures(load)))
                print(f"  round {index} {case} c={concurrency}: {load.rps:.1f} req/s", flush=True)
        for case in order:
            load = run(f"{urls[case]}/ping", 1)
            results.append(Result(case, "ping", 1, index, *_figures(load)))
    return results


def _figures(load: Load) -> tuple[float, float, float, int]:
    return load.rps, load.p50_ms, load.p99_ms, load.errors


def table(results: list[Result]) -> str:
    rows = ["| load | c | server | req/s median (min-max) | p50 ms | p99 ms | errors |"]
    rows.append("|---|---|---|---|---|---|---|")
    keys = sorted(
        {(r.load, r.concurrency, r.case) for r in results},
        key=lambda k: (k[0] != "predictions", k[1], k[2]),
    )
    for load, concurrency, case in keys:
        runs = [r for r in results if (r.load, r.concurrency, r.case) == (load, concurrency, case)]
        rps = [r.rps for r in runs]
        rows.append(
            f"| {load} | {concurrency} | {case} | {statistics.median(rps):.1f} "
            f"({min(rps):.1f}-{max(rps):.1f}) | "
            f"{statistics.median(r.p50_ms for r in runs):.2f} | "
            f"{statistics.median(r.p99_ms for r in runs):.2f} | {sum(r.errors for r in runs)} |"
        )
    return "\n".join(rows)


def proxy_overhead(results: list[Result]) -> str:
    """Ray's added latency per request at c=1: median p50 of ray-1 minus glimpse alone."""

    def p50(case: str, load: str) -> float:
        return statistics.median(
            r.p50_ms for r in results if (r.case, r.load, r.concurrency) == (case, load, 1)
        )

    ping = p50("ray-1", "ping") - p50("glimpse", "ping")
    predict = p50("ray-1", "predictions") - p50("glimpse", "predictions")
    return (
        f"Ray's proxy at c=1 (median p50, ray-1 minus glimpse alone): "
        f"+{ping:.2f} ms on GET /ping, +{predict:.2f} ms on a prediction"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=ROOT / "model_store" / "cnn.mar")
    parser.add_argument("--seconds", type=float, default=10, help="per run (10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(c) for c in s.split(",")],
        default=[1, 8],
        help="closed-loop clients, comma-separated (1,8)",
    )
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--client", choices=["wrk", "python"], default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ray.json")
    args = parser.parse_args(argv)
    args.model = model_name(args.archive)
    if args.client is None:
        args.client = "wrk" if shutil.which("wrk") else "python"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="glbench", dir="/tmp"))  # short: Ray's socket paths
    store = workdir / "store"
    store.mkdir()
    shutil.copy(args.archive, store / args.archive.name)
    body = image_png(args.image_size, workdir / "image.png")
    post = wrk_script(workdir / "image.png", workdir)
    get = workdir / "get.lua"
    get.write_text(PING_SCRIPT)

    def run(url: str, concurrency: int) -> Load:
        if args.client == "python" and url.endswith("/ping"):
            raise SystemExit("the python client measures predictions only: install wrk")
        if args.client == "python":
            return run_python_http(url, body, concurrency, args.seconds)
        script = get if url.endswith("/ping") else post
        return run_wrk(url, script, concurrency, args.seconds, threads=1)

    (ray_port,) = free_ports(1)
    started = start_ray(store, ray_port, [1, 2], workdir / "ray")
    glimpse = Glimpse("glimpse", args.archive, workdir / "glimpse")
    try:
        glimpse.start()
        glimpse.wait(args.model, body)
        ray_url = f"http://127.0.0.1:{ray_port}"
        urls = {"glimpse": glimpse.url, "ray-1": f"{ray_url}/r1", "ray-2": f"{ray_url}/r2"}
        for url in urls.values():  # warm up each server once
            run(f"{url}/predictions/{args.model}", 2)
        results = measure(run, urls, args)
    finally:
        glimpse.stop()
        stop_ray(started)
        shutil.rmtree(workdir, ignore_errors=True)
    report = f"{table(results)}\n\n{proxy_overhead(results)}"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
