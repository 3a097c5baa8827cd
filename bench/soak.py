"""Loopback soak: a mix of valid requests on both doors for a while; none lost, none failed,
and the server's memory flat.

It starts `python -m service` on free loopback ports with a temporary model store holding
cnn.mar and tabular.mar (copied from --model-store; built with `python -m training` only when
missing there), warms it up, then has a few concurrent clients send predictions, heatmaps and
explanations (activation, gradcam, integrated_gradients with few steps; tabular predictions and
attributions) over HTTP (httpx) and gRPC (glimpse.v1 stubs) until --seconds pass or --requests
have been sent. It reports, per kind of request, how many were sent and answered, the status
codes and p50/p99 latency, and the server's resident memory (VmRSS) after the warm-up, after
the first 1,000 and 10,000 requests and at the end.

Exit status 1, with the figures, when a request got no answer, an answer was not a success
(a 5xx or any other), or the memory grew by more than --max-growth after the warm-up. The JSON
document goes to stdout (and --out), the progress and a summary to stderr. Only the server this
script started is stopped, by its pid.

Example: ``python bench/soak.py --seconds 60`` or ``python bench/soak.py --requests 10000``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _servers import _env, descendants, launch_glimpse  # noqa: E402

from service.client import encode_row  # noqa: E402
from service.proto.glimpse.v1 import glimpse_pb2 as pb  # noqa: E402
from service.proto.glimpse.v1 import glimpse_pb2_grpc as pb_grpc  # noqa: E402

ARCHIVES = {"cnn.mar": "cnn", "tabular.mar": "tabular"}  # file -> `python -m training` command
CHECKPOINTS = (1_000, 10_000)  # requests after which the server's RSS is read
GRPC_FAULTS = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE"}  # the server's fault, like 5xx
ROW = {
    "Store": 1,
    "StoreType": "a",
    "Assortment": "c",
    "DayOfWeek": 4,
    "Date": "2013-10-10",
    "Promo": 1,
    "StateHoliday": "0",
    "SchoolHoliday": 0,
    "CompetitionDistance": 1250.0,
    "Promo2": 0,
}
FEW_STEPS = {"steps": "8", "internal_batch_size": "64"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- what is sent ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """One kind of request: HTTP (route, query, JSON or image body) or gRPC (a built request)."""

    name: str
    route: str = ""
    params: dict[str, str] = field(default_factory=dict)
    json_body: Any = None
    grpc_method: str = ""  # "Predict" or "Explain"
    grpc_request: Any = None


def kinds(image: bytes) -> list[Kind]:
    """The mix, one of each in turn."""
    picture = [pb.Input(image=image)]
    row = [pb.Input(row=encode_row(ROW))]
    ig = {"methods": "integrated_gradients", **FEW_STEPS}
    return [
        Kind("http predict", "/predictions/cnn"),
        Kind("http heatmap", "/heatmaps/cnn"),
        Kind("http explain activation", "/explanations/cnn", {"methods": "activation"}),
        Kind("http explain gradcam", "/explanations/cnn", {"methods": "gradcam"}),
        Kind("http explain ig", "/explanations/cnn", {**ig, "overlay": "false"}),
        Kind("http tabular predict", "/predictions/tabular", json_body=[ROW]),
        Kind("http tabular explain", "/explanations/tabular", FEW_STEPS, json_body=[ROW]),
        Kind(
            "grpc predict",
            grpc_method="Predict",
            grpc_request=pb.PredictRequest(model="cnn", inputs=picture),
        ),
        Kind(
            "grpc explain gradcam",
            grpc_method="Explain",
            grpc_request=pb.ExplainRequest(
                model="cnn", inputs=picture, methods=["gradcam"], include_overlay=True
            ),
        ),
        Kind(
            "grpc explain ig",
            grpc_method="Explain",
            grpc_request=pb.ExplainRequest(
                model="cnn", inputs=picture, methods=["integrated_gradients"], params=FEW_STEPS
            ),
        ),
        Kind(
            "grpc tabular predict",
            grpc_method="Predict",
            grpc_request=pb.PredictRequest(model="tabular", inputs=row),
        ),
        Kind(
            "grpc tabular explain",
            grpc_method="Explain",
            grpc_request=pb.ExplainRequest(model="tabular", inputs=row, params=FEW_STEPS),
        ),
    ]


def test_image(size: int = 96) -> bytes:
    """A generated shape (the cnn's training distribution), resized to `size`, as PNG."""
    from training.shapes import make_shapes

    image = Image.fromarray(make_shapes(1, seed=4242).images[0]).resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- what came back --------------------------------------------------------------------------------
@dataclass
class Tally:
    """Per kind: sent, answered (any status), status codes, latencies of answers; and why
    requests that got no answer got none."""

    sent: dict[str, int] = field(default_factory=dict)
    answered: dict[str, int] = field(default_factory=dict)
    codes: dict[str, dict[str, int]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    lost_reasons: dict[str, int] = field(default_factory=dict)

    def send(self, kind: str) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + 1

    def answer(self, kind: str, code: str, seconds: float) -> None:
        self.answered[kind] = self.answered.get(kind, 0) + 1
        codes = self.codes.setdefault(kind, {})
        codes[code] = codes.get(code, 0) + 1
        self.latencies.setdefault(kind, []).append(seconds)

    def lose(self, reason: str) -> None:
        self.lost_reasons[reason] = self.lost_reasons.get(reason, 0) + 1

    @property
    def total_answered(self) -> int:
        return sum(self.answered.values())

    def report(self) -> dict[str, Any]:
        per_kind = {}
        for kind, sent in self.sent.items():
            ms = np.asarray(self.latencies.get(kind) or [0.0]) * 1e3
            per_kind[kind] = {
                "sent": sent,
                "answered": self.answered.get(kind, 0),
                "lost": sent - self.answered.get(kind, 0),
                "codes": dict(sorted(self.codes.get(kind, {}).items())),
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2),
            }
        codes = [c for k in self.codes.values() for c, n in k.items() for _ in range(n)]
        return {
            "kinds": per_kind,
            "sent": sum(self.sent.values()),
            "answered": self.total_answered,
            "lost": sum(self.sent.values()) - self.total_answered,
            "lost_reasons": self.lost_reasons,
            "server_errors": sum(1 for c in codes if c.startswith("5") or c in GRPC_FAULTS),
            "not_ok": sum(1 for c in codes if c not in ("200", "OK")),
        }


# -- the server ------------------------------------------------------------------------------------
def archives(store: Path) -> list[Path]:
    """cnn.mar and tabular.mar from `store`, each built there with its defaults if missing."""
    paths = []
    for file, command in ARCHIVES.items():
        path = store / file
        if not path.is_file():
            log(f"{path} is missing: building it with `python -m training {command}`")
            store.mkdir(parents=True, exist_ok=True)
            build = [sys.executable, "-m", "training", command, "--out", str(store)]
            subprocess.run(build, check=True, cwd=ROOT, env=_env())
        paths.append(path)
    return paths


class Server:
    """`python -m service` over a temporary store on free ports; stopped by its pid only."""

    def __init__(self, paths: list[Path], workdir: Path) -> None:
        self.log = workdir / "glimpse.log"
        self.process, self.http_port, self.grpc_port = launch_glimpse(paths, workdir, self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def rss_kb(self) -> int:
        """VmRSS of the server process and its live descendants (its decode processes),
        summed, from /proc/<pid>/status."""
        total = 0
        for pid in descendants(self.process.pid):
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except FileNotFoundError:  # ended since it was listed
                continue
            total += next((int(x.split()[1]) for x in lines if x.startswith("VmRSS:")), 0)
        if not total:
            raise RuntimeError(f"no VmRSS for pid {self.process.pid}")
        return total

    def wait_ready(self, image: bytes, timeout: float = 180) -> None:
        """Until both models answer a prediction over HTTP (glimpse loads before it listens)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                cnn = httpx.post(f"{self.url}/predictions/cnn", content=image, timeout=30)
                rows = httpx.post(f"{self.url}/predictions/tabular", json=[ROW], timeout=30)
                if cnn.status_code == rows.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"glimpse did not answer a prediction within {timeout:.0f} s:\n{tail}")

    def stop(self) -> None:
        """SIGTERM to our pid, SIGKILL after 30 s."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the load --------------------------------------------------------------------------------------
class Load:
    """`clients` closed-loop clients sending the mix in turn until `stop()` says so."""

    def __init__(self, server: Server, mix: list[Kind], image: bytes, clients: int) -> None:
        self.server, self.mix, self.image, self.clients = server, mix, image, clients

    async def run(
        self,
        tally: Tally,
        stop: Callable[[int], bool],
        on_answer: Callable[[int], None] = lambda n: None,
    ) -> None:
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        counter = itertools.count()
        async with (
            httpx.AsyncClient(base_url=self.server.url, limits=limits, timeout=120) as http,
            grpc.aio.insecure_channel(self.server.address) as channel,
        ):
            stub = pb_grpc.GlimpseStub(channel)

            async def client() -> None:
                while not stop(index := next(counter)):
                    kind = self.mix[index % len(self.mix)]
                    tally.send(kind.name)
                    await self.one(kind, http, stub, tally)
                    on_answer(tally.total_answered)

            await asyncio.gather(*(client() for _ in range(self.clients)))

    async def one(
        self, kind: Kind, http: httpx.AsyncClient, stub: pb_grpc.GlimpseStub, tally: Tally
    ) -> None:
        started = time.perf_counter()
        try:
            code = await self._send(kind, http, stub)
        except httpx.HTTPError as exc:
            tally.lose(f"{kind.name}: {type(exc).__name__}")
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                tally.lose(f"{kind.name}: {exc.code().name}")  # no answer came in time
                return
            code = exc.code().name
            if code == "UNAVAILABLE" and "connect" in (exc.details() or "").lower():
                tally.lose(f"{kind.name}: UNAVAILABLE ({exc.details()})")
                return
        tally.answer(kind.name, code, time.perf_counter() - started)

    async def _send(self, kind: Kind, http: httpx.AsyncClient, stub: pb_grpc.GlimpseStub) -> str:
        if kind.grpc_method:
            call: Callable[..., Awaitable[Any]] = getattr(stub, kind.grpc_method)
            await call(kind.grpc_request, timeout=120)
            return "OK"
        if kind.json_body is not None:
            response = await http.post(kind.route, json=kind.json_body, params=kind.params)
        else:
            headers = {"content-type": "image/png"}
            response = await http.post(
                kind.route, content=self.image, headers=headers, params=kind.params
            )
        return str(response.status_code)


# -- the soak --------------------------------------------------------------------------------------
def soak(args: argparse.Namespace, server: Server, image: bytes) -> dict[str, Any]:
    load = Load(server, kinds(image), image, args.clients)
    warm = Tally()
    log(f"warm-up: {args.warmup} requests from {args.clients} clients")
    asyncio.run(load.run(warm, lambda i: i >= args.warmup))
    rss: dict[str, int] = {"warm": server.rss_kb()}
    log(f"RSS after warm-up: {rss['warm'] / 1024:.1f} MiB")

    def on_answer(n: int) -> None:
        for mark in CHECKPOINTS:
            if n == mark:
                rss[f"after_{mark}"] = server.rss_kb()
                log(f"RSS after {mark} requests: {rss[f'after_{mark}'] / 1024:.1f} MiB")

    deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
    tally = Tally()
    log(f"soak: {_bounds(args)}")
    started = time.monotonic()

    def stop(index: int) -> bool:
        return (args.requests is not None and index >= args.requests) or (
            time.monotonic() >= deadline
        )

    asyncio.run(load.run(tally, stop, on_answer))
    seconds = time.monotonic() - started
    rss["end"] = server.rss_kb()
    growth = (rss["end"] - rss["warm"]) / rss["warm"]
    result = tally.report()
    failures = _failures(result, warm.report(), growth, args.max_growth)
    return {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "clients": args.clients,
            "warmup_requests": args.warmup,
            "bounds": _bounds(args),
            "seconds": round(seconds, 1),
            "requests_per_second": round(result["answered"] / max(seconds, 1e-9), 1),
            "server_pid": server.process.pid,
        },
        "warmup": warm.report(),
        **result,
        "rss_kb": rss,
        "rss_growth": round(growth, 4),
        "max_growth": args.max_growth,
        "failures": failures,
        "ok": not failures,
    }


def _bounds(args: argparse.Namespace) -> str:
    parts = []
    if args.requests is not None:
        parts.append(f"{args.requests} requests")
    if args.seconds:
        parts.append(f"{args.seconds:g} s")
    return " or ".join(parts) + f" from {args.clients} clients, whichever ends first"


def _failures(
    result: dict[str, Any], warm: dict[str, Any], growth: float, limit: float
) -> list[str]:
    failures = []
    for phase, figures in (("warm-up", warm), ("soak", result)):
        if figures["lost"]:
            failures.append(f"{phase}: {figures['lost']} requests got no answer")
        if figures["server_errors"]:
            failures.append(f"{phase}: {figures['server_errors']} server errors (5xx/INTERNAL)")
        if figures["not_ok"]:
            failures.append(f"{phase}: {figures['not_ok']} answers were not a success")
    if growth > limit:
        failures.append(f"RSS grew {growth:.1%} after the warm-up (limit {limit:.0%})")
    return failures


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"{report['meta']['bounds']}: {report['sent']} sent, {report['answered']} answered, "
        f"{report['lost']} lost, {report['server_errors']} server errors, "
        f"{report['meta']['requests_per_second']} req/s over {report['meta']['seconds']} s",
        "",
        "| kind | sent | answered | codes | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, k in report["kinds"].items():
        codes = " ".join(f"{c}×{n}" for c, n in k["codes"].items())
        lines.append(
            f"| {name} | {k['sent']} | {k['answered']} | {codes} | {k['p50_ms']} | {k['p99_ms']} |"
        )
    rss = ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in report["rss_kb"].items())
    lines += ["", f"RSS: {rss}; growth after warm-up {report['rss_growth']:.1%}"]
    lines.append("OK" if report["ok"] else "FAILED: " + "; ".join(report["failures"]))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-store",
        type=Path,
        default=Path("model_store"),
        help="where cnn.mar and tabular.mar are (built there if missing; default model_store)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="length of the soak (default 60 without --requests, else no time bound)",
    )
    parser.add_argument("--requests", type=int, help="requests to send (default: no count bound)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests (300)")
    parser.add_argument(
        "--max-growth", type=float, default=0.10, help="allowed RSS growth after warm-up (0.10)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.seconds is None and args.requests is None:
        args.seconds = 60.0
    if args.clients < 1 or args.warmup < 0 or (args.requests is not None and args.requests < 1):
        parser.error("--clients and --requests need at least 1, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        log("interrupted (a server this run started has been stopped)")
        return 130


def run(args: argparse.Namespace) -> int:
    # SIGTERM as Ctrl-C: the finally below stops the server either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    paths = archives(args.model_store)
    image = test_image()
    with tempfile.TemporaryDirectory(prefix="glimpse-soak-") as tmp:
        server = Server(paths, Path(tmp))
        try:
            server.wait_ready(image)
            log(f"glimpse pid {server.process.pid}: {server.url}, gRPC {server.address}")
            report = soak(args, server, image)
        finally:
            server.stop()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    log(summary(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
