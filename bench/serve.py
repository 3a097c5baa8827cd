"""Serving throughput: glimpse against TorchServe 0.12 on the same archive and image.

One command starts glimpse (`python -m service`) and TorchServe (1 worker) on free loopback
ports with the same .mar, runs a closed-loop HTTP load on POST /predictions/<model> at each
concurrency in alternating rounds (wrk when installed, else an asyncio + httpx client), and
prints req/s (median, min-max over rounds), p50/p99 latency, server CPU ms per request and
the glimpse/TorchServe ratio per round. It also measures the raw model's forward passes/s
in-process, gRPC Predict against HTTP on glimpse, and /heatmaps (activation, gradcam)
against a prediction, and writes everything to bench/results/serve.json.

    .venv/bin/python bench/serve.py --archive model_store/cnn.mar            # full run
    .venv/bin/python bench/serve.py --archive model_store/cnn.mar --quick    # smoke run
    .venv/bin/python bench/serve.py --archive model_store/cnn.mar --aa       # + A/A check

The load generator runs on the same cores as the servers: every req/s and latency figure
includes that competition. Server CPU counts the server processes (and their children) only.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _servers import (  # noqa: E402
    CONTENT_TYPE,
    Glimpse,
    TorchServe,
    cpu_seconds,
    model_name,
)

AA_NOTE = (
    "A ratio inside the A/A spread (about ±15 % per round on this machine; run with --aa to "
    "measure it) is noise."
)
CLIENT_NOTE = (
    "The load generator shares the machine's cores with the servers: req/s and latencies "
    "include that competition. Server CPU ms/req counts the server process and its children "
    "(TorchServe: the Java frontend and its Python worker); client CPU ms/req is the load "
    "generator's own."
)
SECTIONS = ("raw", "grpc", "heatmaps")
RAW_SPELLS = 5
BUSY_LOAD = 0.5  # 1-minute load average before the bench starts anything


# -- one measured load ---------------------------------------------------------------------------
@dataclass
class Load:
    """What a load generator saw: responses (any status), failures, wall seconds, latencies."""

    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float


@dataclass
class Run:
    case: str
    concurrency: int
    round: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float  # per request
    client_cpu_ms: float  # per request


@dataclass
class Case:
    """One thing to load: a URL on a server (HTTP) or a gRPC address, and whose CPU counts."""

    name: str
    pid: Callable[[], int]
    url: str = ""  # HTTP
    grpc: str = ""  # gRPC address host:port
    client: str = "wrk"  # wrk | python


# -- wrk -----------------------------------------------------------------------------------------
WRK_SCRIPT = """\
local f = assert(io.open({path}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
"""
UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk_script(body_file: Path, workdir: Path) -> Path:
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT.format(path=json.dumps(str(body_file)), content_type=CONTENT_TYPE))
    return script


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * UNITS_MS[match[2]]


def parse_wrk(out: str) -> tuple[int, int, float, float, float, float]:
    """wrk --latency output -> (requests, errors, seconds, req/s, p50 ms, p99 ms)."""
    done = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)\s*$", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)\s*$", out, re.M)
    if not (done and rps and p50 and p99):
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    errors = 0
    if non2xx := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(non2xx[1])
    if sockets := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(v) for v in sockets.groups())
    return (
        int(done[1]),
        errors,
        _ms(done[2]) / 1e3,
        float(rps[1]),
        _ms(p50[1]),
        _ms(p99[1]),
    )


def run_wrk(url: str, script: Path, concurrency: int, seconds: float, threads: int) -> Load:
    command = [
        "wrk",
        f"-t{min(threads, concurrency)}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = process.communicate(timeout=seconds + 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{out}")
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Load(*parse_wrk(out), client_cpu_s=client)


# -- Python clients (asyncio) --------------------------------------------------------------------
async def closed_loop(
    call: Callable[[], Awaitable[bool]], concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    """`concurrency` tasks, each sending its next request when the last one answered, until
    `seconds` have passed. -> (latencies in s of every answer, failures, wall seconds)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def user() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                ok = await call()
            except Exception:  # noqa: BLE001 - a failed request is counted, the loop goes on
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(user() for _ in range(concurrency))), seconds + 60)
    return latencies, errors, time.perf_counter() - started


def _load(latencies: list[float], errors: int, seconds: float, cpu: float) -> Load:
    ms = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return Load(
        len(latencies),
        errors,
        seconds,
        len(latencies) / seconds,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        cpu,
    )


def run_python_http(url: str, body: bytes, concurrency: int, seconds: float) -> Load:
    async def main() -> tuple[list[float], int, float]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"content-type": CONTENT_TYPE}
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def call() -> bool:
                response = await client.post(url, content=body, headers=headers)
                return response.status_code == 200

            return await closed_loop(call, concurrency, seconds)

    cpu = time.process_time()
    result = asyncio.run(main())
    return _load(*result, time.process_time() - cpu)


def run_grpc(address: str, model: str, body: bytes, concurrency: int, seconds: float) -> Load:
    import grpc

    from service.proto.glimpse.v1 import glimpse_pb2 as pb
    from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc

    request = pb.PredictRequest(model=model, inputs=[pb.Input(image=body)])

    async def main() -> tuple[list[float], int, float]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GlimpseStub(channel)

            async def call() -> bool:
                reply = await stub.Predict(request, timeout=30)
                return len(reply.predictions) == 1

            return await closed_loop(call, concurrency, seconds)

    cpu = time.process_time()
    result = asyncio.run(main())
    return _load(*result, time.process_time() - cpu)


# -- the rounds ----------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace, body: bytes, workdir: Path, model: str) -> None:
        self.args = args
        self.body = body
        self.model = model
        self.body_file = workdir / "body.bin"
        self.body_file.write_bytes(body)
        self.script = wrk_script(self.body_file, workdir)

    def load(self, case: Case, concurrency: int, seconds: float) -> Load:
        if case.grpc:
            return run_grpc(case.grpc, self.model, self.body, concurrency, seconds)
        if case.client == "wrk":
            return run_wrk(case.url, self.script, concurrency, seconds, self.args.wrk_threads)
        return run_python_http(case.url, self.body, concurrency, seconds)

    def measure(self, case: Case, concurrency: int, index: int) -> Run:
        waited = settle(self.args.settle)
        if waited > 1.0:
            log(f"  (waited {waited:.1f} s for the CPUs to go idle before {case.name})")
        pid = case.pid()
        cpu = cpu_seconds(pid)
        load = self.load(case, concurrency, self.args.seconds)
        server = cpu_seconds(pid) - cpu
        n = max(load.requests, 1)
        run = Run(
            case.name,
            concurrency,
            index,
            load.requests,
            load.errors,
            round(load.seconds, 3),
            round(load.rps, 2),
            round(load.p50_ms, 3),
            round(load.p99_ms, 3),
            round(server * 1e3 / n, 3),
            round(load.client_cpu_s * 1e3 / n, 3),
        )
        flag = f"  ERRORS {run.errors}" if run.errors else ""
        log(
            f"  c={concurrency:<3} round {index + 1}/{self.args.rounds} {case.name:<22} "
            f"{run.rps:8.1f} req/s  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms  "
            f"server {run.server_cpu_ms:6.2f} CPU ms/req{flag}"
        )
        return run

    def rounds(self, cases: list[Case], concurrencies: Sequence[int]) -> list[Run]:
        """Each concurrency: `rounds` rounds of every case, the order reversed every other
        round, so a ratio compares runs next to each other in time."""
        if self.args.warmup > 0:
            for case in cases:
                self.load(case, max(concurrencies), self.args.warmup)
        runs = []
        for concurrency in concurrencies:
            for index in range(self.args.rounds):
                order = cases if index % 2 == 0 else cases[::-1]
                runs += [self.measure(case, concurrency, index) for case in order]
        return runs


def settle(limit: float, idle: float = 0.85, window: float = 0.5) -> float:
    """Wait, at most `limit` seconds, until the machine's CPUs are `idle` (a share) over
    `window`: the engine loaded just before may still be busy after its load ends
    (TorchServe's worker and JVM were, for a few seconds), and the next run must not pay for
    it. Returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = _cpu_ticks()
        time.sleep(window)
        after = _cpu_ticks()
        total = sum(after) - sum(before)
        if total > 0 and (after[3] - before[3]) / total >= idle:
            break
    return time.monotonic() - started


def _cpu_ticks() -> list[int]:
    """The machine's CPU time counters (user, nice, system, idle, ...), from /proc/stat."""
    with open("/proc/stat") as stat:
        return [int(v) for v in stat.readline().split()[1:]]


# -- statistics ----------------------------------------------------------------------------------
def summary(runs: list[Run], case: str, concurrency: int) -> dict[str, Any]:
    mine = [r for r in runs if r.case == case and r.concurrency == concurrency]
    rps = [r.rps for r in mine]
    return {
        "rps_median": statistics.median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_ms": statistics.median(r.p50_ms for r in mine),
        "p99_ms": statistics.median(r.p99_ms for r in mine),
        "server_cpu_ms_per_request": statistics.median(r.server_cpu_ms for r in mine),
        "client_cpu_ms_per_request": statistics.median(r.client_cpu_ms for r in mine),
        "requests": sum(r.requests for r in mine),
        "errors": sum(r.errors for r in mine),
        "rounds": len(mine),
    }


def ratio(runs: list[Run], a: str, b: str, concurrency: int) -> dict[str, Any]:
    """a/b req/s in each round (the two runs next to each other), median and min-max."""
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        if r.concurrency == concurrency and r.case in (a, b):
            by_round.setdefault(r.round, {})[r.case] = r.rps
    values = [
        pair[a] / pair[b]
        for pair in by_round.values()
        if a in pair and b in pair and min(pair[a], pair[b]) > 0
    ]
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "rounds": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": [round(v, 4) for v in values],
    }


# -- the raw model ---------------------------------------------------------------------------
def raw_model(args: argparse.Namespace, image: Image.Image) -> dict[str, Any]:
    """The archive's model alone, and the lean copy predictions run through (service/lean.py),
    traced and compiled: forward passes/s at each batch size, in this process."""
    import torch

    from service.archive import open_archive
    from service.lean import channels_last

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        handler = open_archive(args.archive, Path(tmp)).handler
        if getattr(handler, "kind", "") != "image":
            raise SystemExit(f"{args.archive} is not an image model; bench/serve.py needs one")
        model = handler.model
        assert model is not None
        one = handler.preprocess([image.convert("RGB")])  # type: ignore[attr-defined]
        lean = getattr(handler, "lean", None)
        variants = {"model": (model, lambda x: x)}
        if lean is not None:
            variants["lean"] = (lean, channels_last)
        compiled = getattr(handler, "compiled", None)
        if compiled is not None:
            variants["compiled"] = (compiled, channels_last)
        inputs = {b: one.repeat(b, 1, 1, 1).contiguous() for b in args.raw_batches}
        rates = {(v, b): [] for v in variants for b in args.raw_batches}
        spell = args.raw_seconds / RAW_SPELLS
        with torch.inference_mode():
            for network, layout in variants.values():  # warm-up: allocations, oneDNN primitives
                for batch in inputs.values():
                    for _ in range(3):
                        network(layout(batch))
            # Batch sizes and variants interleaved, spell by spell: a burst of machine noise
            # lands on all of them, not on one; each figure is the median of its spells.
            for _ in range(RAW_SPELLS):
                for (variant, size), spells in rates.items():
                    network, layout = variants[variant]
                    batch = inputs[size]
                    passes, started = 0, time.perf_counter()
                    while passes < 3 or time.perf_counter() - started < spell:
                        network(layout(batch))
                        passes += 1
                    spells.append(passes / (time.perf_counter() - started))
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for (variant, size), spells in rates.items():
        per_s = statistics.median(spells)
        results[variant].append(
            {
                "batch": size,
                "forward_per_s": round(per_s, 1),
                "samples_per_s": round(per_s * size, 1),
                "ms_per_forward": round(1e3 / per_s, 3),
                "spells_forward_per_s": [round(v, 1) for v in spells],
            }
        )
        log(
            f"  raw {variant:<8} batch {size:<3} {per_s:8.1f} forward/s  "
            f"{per_s * size:8.1f} samples/s  (spells {min(spells):.1f}–{max(spells):.1f})"
        )
    best = max(results["model"], key=lambda r: r["samples_per_s"])
    return {
        "input": list(one.shape[1:]),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "batches": results["model"],
        "lean_batches": results.get("lean", []),
        "compiled_batches": results.get("compiled", []),
        "best": best,
    }


# -- report --------------------------------------------------------------------------------------
def _range(s: dict[str, Any], key: str = "rps", digits: int = 1) -> str:
    return f"{s[f'{key}_min']:.{digits}f}–{s[f'{key}_max']:.{digits}f}"


def _ratio_cell(r: dict[str, Any]) -> tuple[str, str]:
    return f"{r['median']:.2f}", f"{r['min']:.2f}–{r['max']:.2f}"


def report(result: dict[str, Any]) -> str:
    meta = result["meta"]
    out = [
        f"# bench/serve.py — {meta['date']}",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['cpus']} CPUs ({meta['cpu_model']}), load average at start {meta['loadavg']}; "
        f"{meta['model']} from {meta['archive']}; image {meta['image']}; client {meta['client']}; "
        f"{meta['rounds']} alternating rounds × {meta['seconds']} s per concurrency.",
        "",
        CLIENT_NOTE,
    ]
    if float(meta["loadavg"].split()[0]) >= BUSY_LOAD:
        out += [
            "",
            f"**The machine was not quiet** (load average {meta['loadavg']} at start, "
            f"{meta.get('loadavg_end', '?')} at the end): other work competes for the cores, "
            "and torch's OpenMP threads, which spin while they wait, can then collapse a "
            "server's req/s and inflate its CPU ms/req. Rerun on a quiet machine.",
        ]
    http = result.get("http")
    if http:
        out += [
            "",
            f"## POST /predictions/{meta['model']} over HTTP",
            "",
            "| engine | c | req/s (median) | req/s min–max | p50 ms | p99 ms "
            "| server CPU ms/req | client CPU ms/req | errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for engine, by_c in http["summary"].items():
            for c, s in by_c.items():
                out.append(
                    f"| {engine} | {c} | {s['rps_median']:.1f} | {_range(s, 'rps')} "
                    f"| {s['p50_ms']:.2f} | {s['p99_ms']:.2f} "
                    f"| {s['server_cpu_ms_per_request']:.2f} "
                    f"| {s['client_cpu_ms_per_request']:.2f} | {s['errors']} |"
                )
        out += [
            "",
            "| c | glimpse / TorchServe req/s (median) | min–max over rounds "
            "| p99 glimpse / TorchServe |"
            + (" glimpse / glimpse-b (A/A) | A/A min–max |" if "aa" in http else ""),
            "|---|---|---|---|" + ("---|---|" if "aa" in http else ""),
        ]
        for c, r in http["ratio"].items():
            median, spread = _ratio_cell(r)
            g, t = http["summary"]["glimpse"][c], http["summary"]["torchserve"][c]
            row = f"| {c} | {median} | {spread} | {g['p99_ms'] / t['p99_ms']:.2f} |"
            if "aa" in http:
                row += " {} | {} |".format(*_ratio_cell(http["aa"][c]))
            out.append(row)
        out += ["", AA_NOTE]
        if "aa" in http:
            spread = [abs(v - 1) for r in http["aa"].values() for v in r["rounds"]]
            out.append(
                f"Measured A/A spread this run: up to ±{100 * max(spread):.0f} % per round."
                if spread
                else ""
            )
    raw = result.get("raw")
    if raw:
        out += [
            "",
            f"## Raw model, in-process (input {raw['input']}, torch.inference_mode, "
            f"{raw['torch_threads']} intra-op / {raw['torch_interop_threads']} inter-op threads)",
            "",
            "| batch | forward passes/s | samples/s | ms per forward "
            "| traced copy samples/s | compiled copy samples/s |",
            "|---|---|---|---|---|---|",
        ]
        copies = [
            {b["batch"]: b["samples_per_s"] for b in raw.get(key, [])}
            for key in ("lean_batches", "compiled_batches")
        ]
        for b in raw["batches"]:
            cells = " | ".join(str(c.get(b["batch"], "–")) for c in copies)
            out.append(
                f"| {b['batch']} | {b['forward_per_s']:.1f} | {b['samples_per_s']:.1f} "
                f"| {b['ms_per_forward']:.2f} | {cells} |"
            )
        best = raw["best"]
        out += ["", f"Best batch: {best['batch']} at {best['samples_per_s']:.0f} samples/s."]
        if http:
            c, s = max(http["summary"]["glimpse"].items(), key=lambda kv: kv[1]["rps_median"])
            share = s["rps_median"] / best["samples_per_s"]
            batch1 = s["rps_median"] / raw["batches"][0]["samples_per_s"]
            out.append(
                f"glimpse at its best concurrency (c={c}, {s['rps_median']:.1f} req/s) delivers "
                f"{100 * share:.0f} % of the best-batch samples/s "
                f"({100 * batch1:.0f} % of batch {raw['batches'][0]['batch']})."
            )
    grpc = result.get("grpc")
    if grpc:
        out += [
            "",
            "## glimpse: gRPC Predict against HTTP (both with Python asyncio clients)",
            "",
            "| c | HTTP req/s | gRPC req/s | gRPC / HTTP (median) | min–max "
            "| HTTP p50 / p99 ms | gRPC p50 / p99 ms | server CPU ms/req HTTP / gRPC "
            "| client CPU ms/req HTTP / gRPC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c, r in grpc["ratio"].items():
            h, g = grpc["summary"]["http"][c], grpc["summary"]["grpc"][c]
            out.append(
                f"| {c} | {h['rps_median']:.1f} | {g['rps_median']:.1f} | "
                + " | ".join(_ratio_cell(r))
                + f" | {h['p50_ms']:.2f} / {h['p99_ms']:.2f} | {g['p50_ms']:.2f} / "
                f"{g['p99_ms']:.2f} | {h['server_cpu_ms_per_request']:.2f} / "
                f"{g['server_cpu_ms_per_request']:.2f} | {h['client_cpu_ms_per_request']:.2f} / "
                f"{g['client_cpu_ms_per_request']:.2f} |"
            )
    heat = result.get("heatmaps")
    if heat:
        c = heat["concurrency"]
        out += [
            "",
            f"## glimpse: /heatmaps against /predictions at c={c} (PNG overlay)",
            "",
            "| call | req/s (median) | req/s min–max | p50 ms | p99 ms | server CPU ms/req "
            "| cost vs prediction (median) | min–max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in heat["summary"].items():
            cost = heat["cost"].get(name)
            cells = _ratio_cell(cost) if cost else ("1.00", "—")
            out.append(
                f"| {name} | {s['rps_median']:.1f} | {_range(s, 'rps')} | {s['p50_ms']:.2f} "
                f"| {s['p99_ms']:.2f} | {s['server_cpu_ms_per_request']:.2f} | "
                + " | ".join(cells)
                + " |"
            )
        out += [
            "",
            "Cost = prediction req/s ÷ heatmap req/s in the same round (time per request at "
            "that concurrency); issue 11 targets ≤ 1.3 (activation) and ≤ 1.5 (gradcam).",
        ]
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    parser.add_argument("--archive", type=Path, required=True, help="the .mar both servers serve")
    parser.add_argument("--image", type=Path, help="image file to send (default: generated PNG)")
    parser.add_argument("--size", type=int, default=256, help="generated image side (256)")
    parser.add_argument("--seed", type=int, default=4242, help="generated image seed (4242)")
    parser.add_argument(
        "--concurrency", type=ints, default=[1, 8, 32], help="closed-loop clients (1,8,32)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per run (8)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unrecorded seconds per case per section (3)"
    )
    parser.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="HTTP load generator (auto: wrk when installed)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (1)")
    parser.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="before each run, wait at most this long for the CPUs to be 85%% idle (10)",
    )
    parser.add_argument("--aa", action="store_true", help="also glimpse against a 2nd glimpse")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated sections to leave out: {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--heatmap-concurrency", type=int, default=4, help="clients for /heatmaps (4)"
    )
    parser.add_argument(
        "--raw-batches", type=ints, default=[1, 8, 32, 64], help="raw model (1,8,32,64)"
    )
    parser.add_argument(
        "--raw-seconds", type=float, default=3.0, help="raw model, per batch size (3)"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="raw model intra-op threads (torch's)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "bench" / "results" / "serve.json",
        help="JSON results (bench/results/serve.json)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep server logs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 2 s at c=1,4, 1 s warm-ups (flags given still win)",
    )
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(rounds=1, seconds=2.0, concurrency=[1, 4], warmup=1.0, raw_seconds=0.6)
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := args.skip - set(SECTIONS):
        parser.error(f"--skip: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if not args.archive.is_file():
        parser.error(f"no archive {args.archive}: build one with `python -m training cnn`")
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    elif args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (apt-get install -y wrk)")
    if args.rounds < 1 or args.seconds < 1 or not args.concurrency:
        parser.error("--rounds and --concurrency need at least one, --seconds at least 1")
    return args


def test_image(args: argparse.Namespace) -> tuple[bytes, str]:
    if args.image:
        body = args.image.read_bytes()
        with Image.open(io.BytesIO(body)) as image:
            return body, f"{args.image.name} {image.width}x{image.height} ({len(body)} bytes)"
    from training.shapes import make_shapes

    image = Image.fromarray(make_shapes(1, seed=args.seed).images[0])
    image = image.resize((args.size, args.size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    body = buffer.getvalue()
    return body, f"{args.size}x{args.size} PNG ({len(body)} bytes, shapes seed {args.seed})"


def _meta(args: argparse.Namespace, model: str, image: str) -> dict[str, Any]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    client = "python asyncio + httpx"
    if args.client == "wrk":
        version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
        client = f"{version.split(' [')[0].strip()} (-t{args.wrk_threads}, --latency)"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "archive": str(args.archive),
        "model": model,
        "image": image,
        "client": client,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
    }


def check_answers(cases: list[Case], body: bytes, expect: str) -> None:
    """One request per case before any load: a 200 with the expected content type."""
    for case in cases:
        response = httpx.post(
            case.url, content=body, headers={"content-type": CONTENT_TYPE}, timeout=60
        )
        kind = response.headers.get("content-type", "")  # TorchServe sends none
        try:
            if response.status_code != 200:
                raise ValueError(f"status {response.status_code}")
            if expect == "json":
                top = max(response.json().items(), key=lambda kv: kv[1])
                log(f"  {case.name:<12} answers top class {top[0]!r} p={top[1]:.4f}")
            elif expect not in kind:
                raise ValueError(f"content type {kind!r}, not {expect}")
        except ValueError as exc:
            raise RuntimeError(f"{case.name} {case.url}: {exc}: {response.text[:300]}") from None


def estimate(args: argparse.Namespace) -> float:
    """Seconds of measured and warm-up load the arguments ask for."""
    per_c = args.rounds * args.seconds
    total = (3 if args.aa else 2) * (len(args.concurrency) * per_c + args.warmup)
    if "grpc" not in args.skip:
        total += 2 * (len(args.concurrency) * per_c + args.warmup)
    if "heatmaps" not in args.skip:
        total += 3 * (per_c + args.warmup)
    if "raw" not in args.skip:
        total += len(args.raw_batches) * args.raw_seconds
    return total


def _on_sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C, kill -INT (even when started in the background, where SIGINT starts ignored),
    # kill and a closed terminal all unwind through the `finally` that stops the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)
    archive = args.archive.resolve()
    model = model_name(archive)
    body, image_text = test_image(args)
    result: dict[str, Any] = {"meta": _meta(args, model, image_text)}
    log(f"bench/serve.py: {model} from {archive}, image {image_text}, client {args.client}")
    log(f"about {estimate(args) / 60:.0f} min of load, plus start-up")
    if "raw" not in args.skip:
        log("raw model, in-process (before the servers start)")
        with Image.open(io.BytesIO(body)) as image:
            result["raw"] = raw_model(args, image)
    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    servers: list[Glimpse | TorchServe] = []
    try:
        glimpse = Glimpse("glimpse", archive, workdir / "glimpse")
        torchserve = TorchServe("torchserve", archive, workdir / "torchserve", model)
        servers = [glimpse, torchserve]
        if args.aa:
            servers.append(Glimpse("glimpse-b", archive, workdir / "glimpse-b"))
        log("starting " + ", ".join(s.name for s in servers) + f" under {workdir}")
        started = time.perf_counter()
        for server in servers:
            server.start()
        for server in servers:
            server.wait(model, body)
        log(f"  all answer a prediction after {time.perf_counter() - started:.1f} s")
        bench = Bench(args, body, workdir, model)
        pids = {s.name: (lambda s=s: s.pid) for s in servers}
        path = f"/predictions/{model}"

        log(f"HTTP predictions, client {args.client}")
        cases = [Case(s.name, pids[s.name], s.url + path, client=args.client) for s in servers]
        # glimpse in the middle: next to TorchServe and to glimpse-b in every round.
        order = [cases[1], cases[0], *cases[2:]]
        check_answers(order, body, "json")
        runs = bench.rounds(order, args.concurrency)
        http: dict[str, Any] = {
            "runs": [asdict(r) for r in runs],
            "summary": {
                c.name: {str(n): summary(runs, c.name, n) for n in args.concurrency} for c in cases
            },
            "ratio": {str(n): ratio(runs, "glimpse", "torchserve", n) for n in args.concurrency},
        }
        if args.aa:
            http["aa"] = {str(n): ratio(runs, "glimpse", "glimpse-b", n) for n in args.concurrency}
        result["http"] = http
        for server in servers[1:]:  # leave glimpse alone on the machine from here on
            server.stop()

        if "grpc" not in args.skip:
            log("glimpse: gRPC Predict against HTTP, both Python asyncio clients")
            grpc_cases = [
                Case("http", pids["glimpse"], glimpse.url + path, client="python"),
                Case("grpc", pids["glimpse"], grpc=glimpse.grpc_address),
            ]
            runs = bench.rounds(grpc_cases, args.concurrency)
            result["grpc"] = {
                "runs": [asdict(r) for r in runs],
                "summary": {
                    c.name: {str(n): summary(runs, c.name, n) for n in args.concurrency}
                    for c in grpc_cases
                },
                "ratio": {str(n): ratio(runs, "grpc", "http", n) for n in args.concurrency},
            }

        if "heatmaps" not in args.skip:
            c = args.heatmap_concurrency
            log(f"glimpse: /heatmaps against /predictions at c={c}, client {args.client}")
            heat_cases = [
                Case("predictions", pids["glimpse"], glimpse.url + path, client=args.client),
                Case(
                    "heatmaps activation",
                    pids["glimpse"],
                    f"{glimpse.url}/heatmaps/{model}",
                    client=args.client,
                ),
                Case(
                    "heatmaps gradcam",
                    pids["glimpse"],
                    f"{glimpse.url}/heatmaps/{model}?method=gradcam",
                    client=args.client,
                ),
            ]
            check_answers(heat_cases[1:], body, "image/png")
            runs = bench.rounds(heat_cases, [c])
            result["heatmaps"] = {
                "concurrency": c,
                "runs": [asdict(r) for r in runs],
                "summary": {h.name: summary(runs, h.name, c) for h in heat_cases},
                "cost": {h.name: ratio(runs, "predictions", h.name, c) for h in heat_cases[1:]},
            }
    except KeyboardInterrupt:
        log("interrupted: stopping the servers")
        return 130
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others all the same
                log(f"could not stop {server.name}: {exc!r}")
        if args.keep_workdir:
            log(f"server logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["meta"]["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    text = report(result)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
