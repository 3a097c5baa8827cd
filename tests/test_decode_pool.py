"""Decode processes (service/decode_pool.py) and what runs in them (service/decoding.py): the
same answers and refusals as decoding in the server's own threads, no torch, a process that
dies replaced, and every process gone when the pool (or the server) stops."""

from __future__ import annotations

import asyncio
import fcntl
import io
import operator
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service import decoding, render
from service.decode_pool import PILLOW_BLOCKS, PIPE_BYTES, DecodePool
from service.decoding import Forgotten, decode_uploads, draw_overlays
from service.encode import png
from service.errors import BadInput, DecoderRestarted, PayloadTooLarge
from service.flows import image as image_flow
from service.flows.base import ExplainRequest, Payload
from service.pipeline import Pipeline
from service.preprocess import ImageTransform
from service.runtime import Runtime
from tests.servers.glimpse import glimpse
from training.shapes import make_shapes

TRANSFORM = ImageTransform.torchserve(resize=64, crop=56)
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    """A pool whose calls always go to its process, never to the server's own thread."""
    pool = DecodePool(1, here=False)
    yield pool
    pool.close()


def run(pool: DecodePool, work: Any, *args: Any, key: int | None = None) -> Any:
    return asyncio.run(pool.run(work, *args, key=key))


def uploads(n: int = 3) -> list[bytes]:
    return [png(Image.fromarray(a).resize((97, 71))) for a in make_shapes(n, seed=5).images]


def test_a_decode_process_answers_as_the_server_s_threads_do(pool: DecodePool) -> None:
    files = uploads()
    there = run(pool, decode_uploads, files, MAX_PIXELS, TRANSFORM)
    here = decode_uploads(files, MAX_PIXELS, TRANSFORM)
    assert there.dtype == np.float32 and there.shape == (3, 3, 56, 56)
    assert np.array_equal(there, here)


def test_a_decode_process_s_pipes_hold_a_megabyte_and_larger_answers_still_arrive(
    pool: DecodePool,
) -> None:
    """Both pipes of a child hold PIPE_BYTES (an overlay's answer, about 100 KB, no longer
    fills them and stalls the child); an answer larger than that arrives whole."""
    [child] = pool._children
    process = child.process
    assert process.stdin is not None and process.stdout is not None
    sizes = [fcntl.fcntl(p.fileno(), fcntl.F_GETPIPE_SZ) for p in (process.stdin, process.stdout)]
    assert sizes == [PIPE_BYTES, PIPE_BYTES]
    assert run(pool, operator.mul, b"ab", 3 * PIPE_BYTES) == b"ab" * (3 * PIPE_BYTES)


def test_calls_behind_one_larger_than_the_pipe_arrive_whole_and_in_order(
    pool: DecodePool,
) -> None:
    """A call larger than the pipe is written in pieces; the calls made after it reach the
    process behind it (never inside it), and each gets its own answer."""
    big = b"x" * (3 * PIPE_BYTES)

    async def calls() -> list[Any]:
        return await asyncio.gather(
            pool.run(len, big),
            *(pool.run(operator.add, i, 1) for i in range(20)),
            pool.run(len, big + b"y"),
            *(pool.run(operator.mul, i, 3) for i in range(20)),
        )

    answers = asyncio.run(calls())
    assert answers[0] == len(big) and answers[21] == len(big) + 1
    assert answers[1:21] == [i + 1 for i in range(20)]
    assert answers[22:] == [i * 3 for i in range(20)]
    assert run(pool, operator.add, 2, 2) == 4


def test_a_bad_upload_is_refused_with_the_same_error(pool: DecodePool) -> None:
    for bad, error in ((b"not an image", BadInput), (uploads(1)[0], PayloadTooLarge)):
        limit = 100 if error is PayloadTooLarge else MAX_PIXELS
        with pytest.raises(error) as here:
            decode_uploads([bad], limit, TRANSFORM)
        with pytest.raises(error) as there:
            run(pool, decode_uploads, [bad], limit, TRANSFORM)
        assert there.value.message == here.value.message


def test_a_decode_process_never_imports_torch(pool: DecodePool) -> None:
    assert run(pool, eval, "'torch' in __import__('sys').modules") is False
    assert run(pool, eval, "'service.decoding' in __import__('sys').modules") is True


def test_a_decode_process_is_ready_before_its_first_call() -> None:
    """Its imports and the overlay colour tables are loaded when the pool starts, not by the
    first upload or overlay (they cost about 0.3 and 0.8 s): a fresh process already has them."""
    fresh = DecodePool(1, here=False)
    try:
        loaded = run(
            fresh,
            eval,
            "[m in __import__('sys').modules for m in ('service.decoding', 'matplotlib')]"
            " + [__import__('service.render').render._lut.cache_info().currsize]",
        )
    finally:
        fresh.close()
    assert loaded == [True, True, 2]


def test_a_decode_process_reuses_its_memory_from_one_picture_to_the_next(
    pool: DecodePool,
) -> None:
    """Pillow keeps freed image blocks and malloc keeps freed buffers, so a decode and a
    draw of a 256 x 256 upload fault in no fresh pages once warm (before: about 150)."""
    [data] = uploads(1)
    data = png(Image.open(io.BytesIO(data)).resize((256, 256)))
    grid = render.normalise(np.random.default_rng(1).random((12, 12)), signed=False)
    [pid] = pool.pids()

    def faults() -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])

    def request(key: int) -> None:
        run(pool, decode_uploads, [data], MAX_PIXELS, TRANSFORM, key, key=key)
        run(pool, draw_overlays, key, None, MAX_PIXELS, TRANSFORM, None, "png", [(0, grid, False)])

    for key in range(5):  # warm
        request(900 + key)
    before = faults()
    for key in range(20):
        request(1000 + key)
    assert (faults() - before) / 20 < 10
    assert run(pool, eval, "__import__('PIL.Image').Image.core.get_blocks_max()") == PILLOW_BLOCKS


def test_overlays_are_drawn_where_the_pictures_were_kept(pool: DecodePool) -> None:
    files = uploads(2)
    grid = render.normalise(np.random.default_rng(0).random((7, 7)), signed=False)
    maps = [(0, grid, False), (1, grid, False)]
    run(pool, decode_uploads, files, MAX_PIXELS, TRANSFORM, 41, key=41)
    assert run(pool, eval, "len(__import__('service.decoding').decoding._kept)") == 1
    # Sent without the uploads, as the flow sends it: the kept pictures are enough.
    drawn = run(pool, draw_overlays, 41, None, MAX_PIXELS, TRANSFORM, None, "png", maps, key=41)
    assert run(pool, eval, "len(__import__('service.decoding').decoding._kept)") == 0  # taken
    # Nothing kept any more: without the uploads that is Forgotten, raised across the pipe ...
    with pytest.raises(Forgotten):
        run(pool, draw_overlays, 41, None, MAX_PIXELS, TRANSFORM, None, "png", maps)
    # ... and with them the pictures are decoded again: the same overlays.
    again = run(pool, draw_overlays, 41, files, MAX_PIXELS, TRANSFORM, None, "png", maps)
    assert [d.picture for d in drawn] == [d.picture for d in again]
    assert drawn[0].size == (97, 71) and drawn[0].scale == 1.0


def test_a_heatmap_whose_pictures_were_dropped_is_drawn_from_its_upload(
    cnn_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow sends the draw without the upload; when the bounds on what is kept dropped
    the pictures (KEPT_REQUESTS=0 keeps none), it sends the upload and gets the same PNG."""
    file = uploads(1)[0]
    sent: list[object] = []  # what each draw call carried for the uploads

    def spied(keep: int, carried: Any, *args: Any) -> Any:
        sent.append(carried)
        return draw_overlays(keep, carried, *args)

    monkeypatch.setattr(image_flow, "draw_overlays", spied)
    runtime = Runtime.load([cnn_archive], decode_processes=0)  # in this process: patchable
    try:
        pipeline = Pipeline(runtime)
        kept = asyncio.run(pipeline.heatmap(ExplainRequest("cnn", [Payload(file)])))
        assert sent == [None]  # the kept picture was enough
        monkeypatch.setattr(decoding, "KEPT_REQUESTS", 0)
        dropped = asyncio.run(pipeline.heatmap(ExplainRequest("cnn", [Payload(file)])))
        assert not decoding._kept
    finally:
        runtime.close()
    assert sent == [None, None, [file]]  # Forgotten, then sent again with the upload
    assert dropped == kept and Image.open(io.BytesIO(dropped)).size == (97, 71)


def test_kept_pictures_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decoding, "KEPT_REQUESTS", 3)
    monkeypatch.setattr(decoding, "_kept", type(decoding._kept)())
    files = uploads(1)
    for key in range(10):  # requests whose overlays were never drawn (they failed, say)
        decode_uploads(files, MAX_PIXELS, TRANSFORM, keep=key)
    assert list(decoding._kept) == [7, 8, 9]
    monkeypatch.setattr(decoding, "KEPT_PIXELS", 97 * 71)
    decode_uploads(files, MAX_PIXELS, TRANSFORM, keep=10)
    assert list(decoding._kept) == [10]


def test_a_decode_process_that_dies_is_replaced() -> None:
    pool = DecodePool(1, here=False)
    try:
        (first,) = pool.pids()
        with pytest.raises(DecoderRestarted, match="retry"):
            run(pool, os._exit, 3)
        files = uploads(1)  # sent at once: it waits for the new process
        assert np.array_equal(
            run(pool, decode_uploads, files, MAX_PIXELS, TRANSFORM),
            decode_uploads(files, MAX_PIXELS, TRANSFORM),
        )
        deadline = time.monotonic() + 10
        while pool.pids() == [first] and time.monotonic() < deadline:
            time.sleep(0.05)  # the new process is recorded just after it answers its first call
        (second,) = pool.pids()
        assert second != first
        assert not _running(first)
    finally:
        pool.close()


def test_signals_for_the_process_group_leave_a_decode_process_alone_and_close_ends_it() -> None:
    pool = DecodePool(2, here=False)
    pids = pool.pids()
    for pid in pids:
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    assert run(pool, eval, "1 + 1") == 2
    assert pool.pids() == pids
    pool.close()
    assert all(not _running(pid) for pid in pids)


def test_a_lone_request_decodes_here_and_any_other_in_the_processes() -> None:
    pool = DecodePool(1)
    (child,) = pool.pids()

    async def main() -> list[int]:
        slow = asyncio.ensure_future(pool.run(time.sleep, 0.5, alone=True))  # idle: here
        await asyncio.sleep(0.1)
        busy = await pool.run(os.getpid, key=7, alone=True)  # something is decoding: a process
        await slow
        return [
            busy,
            await pool.run(os.getpid, alone=False),  # not alone: a process
            await pool.run(os.getpid, alone=True),  # alone and idle: here
            await pool.run(os.getpid, key=7, alone=True),  # key 7's second call: where it went
            await pool.run(os.getpid, key=8, alone=True),
            await pool.run(os.getpid, key=8, alone=False),  # follows key 8's first call: here
        ]

    try:
        places = asyncio.run(main())
    finally:
        pool.close()
    here = os.getpid()
    assert places == [child, child, here, child, here, here]


def test_the_server_decodes_in_one_process_that_ends_with_it(
    cnn_archive: Path, tmp_path: Path
) -> None:
    with glimpse([cnn_archive], tmp_path, args=["--no-grpc"]) as server:
        children = _children(server.process.pid)
        commands = [_command(pid) for pid in children]
        assert sum("service.decode_child" in c for c in commands) == 1, commands
        answer = httpx.post(
            f"{server.http}/predictions/cnn",
            content=uploads(1)[0],
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert answer.status_code == 200 and len(answer.json()) == 4
        bad = httpx.post(f"{server.http}/predictions/cnn", content=b"not an image", timeout=30)
        assert bad.status_code == 400 and bad.json()["code"] == "bad_input"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
    assert all(not _running(pid) for pid in children)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _command(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
