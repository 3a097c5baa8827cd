"""Decode processes: image uploads decoded beside the server's process, not inside it.

libspng, which decodes most PNG uploads, holds the GIL while it works, and so does much of
the Python around it. Under load that time is taken from the event loop and from the
model's worker thread, and the server tops out before its CPU does. So a server decodes
uploads in `DecodePool`: a few child processes (`service.decode_child.serve`), each of which
imports numpy, Pillow, libspng and matplotlib's colour maps but never torch (57 MB, not
250), all before it says it is ready. A call sends a
function of `service.decoding` and its arguments, pickled, down the child's stdin and gets
the return value, or the exception it raised, back on its stdout: the refusals for a bad
upload are the ones the codec threads give.

When the server has one request in flight and nothing is being decoded, its call runs in
the server's own decode thread instead (a lone request has nothing to overlap, and the
round trip costs it about 0.7 ms); a call with a key goes where the first call with that
key went, so an explanation's overlays are drawn where its pictures were kept.

Each child has a writer thread and a reader thread in the server. Calls queue for the
writer, which sends whatever has queued at once, so under load many uploads share one
hand-off; the reader answers each call's future as its frame arrives. There is no
manager thread and no per-call pipe wake-up (what `ProcessPoolExecutor` costs). Both pipes
hold PIPE_BYTES (1 MiB, Linux's limit for a process without privileges) instead of 64 KiB:
an overlay's answer (about 100 KB at 256 x 256) filled the default pipe, and the child then
waited for the server's reader thread before it could take its next call (22 % of its time
under /heatmaps load at c=4, by py-spy).

A child ignores SIGINT and SIGTERM (a terminal's Ctrl-C reaches the whole process group,
and the server drains first): it ends when the server closes its stdin, or when the
server dies, for the same reason. A child that dies on its own (a decoder crash) fails
the calls it had with `DecoderRestarted` (503), and a new child takes the next ones.

`--decode-processes N` (GLIMPSE_DECODE_PROCESSES) sets how many; the default is one on a
machine of two cores or more, none on one core (then the codec threads decode).

Example: ``pool = DecodePool(1); inputs = await pool.run(decode_uploads, [png], 10**7, t)``
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import IO, Any, TypeVar

from service.decode_child import frame, read_frame
from service.errors import DecoderRestarted

T = TypeVar("T")
log = logging.getLogger("glimpse")

_CHILD = "from service.decode_child import serve; serve()"
HERE = -1  # a call's place: the server's own decode thread
# A child's BLAS takes one thread, whichever numpy was built with (see service.threads).
ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
# A child keeps a picture's memory for the next one instead of handing it back and faulting it
# in again (about 130 page faults a request): Pillow keeps PILLOW_BLOCKS freed image blocks (of
# at most 16 MiB), glibc's malloc its freed buffers under 8 MiB. The environment's own win.
PILLOW_BLOCKS = 4
REUSED_MEMORY = {
    "PILLOW_BLOCKS_MAX": str(PILLOW_BLOCKS),
    "MALLOC_MMAP_THRESHOLD_": str(8 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(32 << 20),
}
PIPE_BYTES = 1 << 20  # each pipe's capacity, where the system allows it (see above)
PLACED_KEYS = 1024  # keys remembered until their second call
STOP_SECONDS = 10.0
_RESTARTED = (
    "the process decoding this upload ended before it answered (the server log says why) "
    "and a new one has started; retry, and if it ends again on the same image, send that "
    "image in another format"
)


class DecodePool:
    """`processes` decode processes, started (and ready) when this returns. With `here`, a
    call for the only request in flight, made while nothing is being decoded, runs in the
    server's own decode thread instead: it has nothing to overlap with, and the pipes would
    add their round trip (about 0.7 ms here) to its latency. Under any concurrency the
    processes take every call (decoding here would hold the GIL the server needs)."""

    def __init__(self, processes: int, here: bool = True) -> None:
        if processes < 1:
            raise ValueError(f"a decode pool needs at least one process, not {processes}")
        self.closed = False
        self._ids = itertools.count()
        self._children = [_Child(self) for _ in range(processes)]
        self._here = ThreadPoolExecutor(1, thread_name_prefix="glimpse-decode") if here else None
        self._running_here = 0
        self._placed: OrderedDict[int, int] = OrderedDict()  # key -> HERE or a child's index

    async def run(
        self, work: Callable[..., T], *args: Any, key: int | None = None, alone: bool = False
    ) -> T:
        """`work(*args)` in a decode process, awaited; `work` is a module-level function and
        it and `args` pickle. With `alone` (the caller's request is the only one in flight)
        and every process idle, it runs here instead. A call with a `key` goes where the
        first call with that key went (what one keeps, the next finds). The exception `work`
        raises is raised here; DecoderRestarted when the process died first."""
        place = self._placed.pop(key, None) if key is not None else None
        if place is None:
            place = self._choose(alone)
            if key is not None:
                self._placed[key] = place
                while len(self._placed) > PLACED_KEYS:  # keys whose second call never came
                    self._placed.popitem(last=False)
        if place == HERE and self._here is not None:
            self._running_here += 1
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._here, partial(work, *args))
            finally:
                self._running_here -= 1
        future: Future[T] = Future()
        self._children[place].send(next(self._ids), (work, args), future)
        return await asyncio.wrap_future(future)

    def _choose(self, alone: bool) -> int:
        """HERE for a lone request when nothing is being decoded anywhere (and the pool may),
        else the index of the process with the fewest calls in hand."""
        if (
            alone
            and self._here is not None
            and not self._running_here
            and all(not c.pending for c in self._children)
        ):
            return HERE
        return min(range(len(self._children)), key=lambda i: len(self._children[i].pending))

    def pids(self) -> list[int]:
        """The decode processes' PIDs."""
        return [child.process.pid for child in self._children]

    def close(self) -> None:
        """End every process: each finishes what it was sent, then its stdin closes; one that
        has not ended after STOP_SECONDS is killed."""
        self.closed = True
        if self._here is not None:
            self._here.shutdown(wait=True)
        for child in self._children:
            child.stop()


class _Child:
    """One decode process, its writer and reader threads, and the calls it has in hand."""

    def __init__(self, pool: DecodePool) -> None:
        self.pool = pool
        self.pending: dict[int, Future[Any]] = {}
        self.broken = ""  # why no process could be started in place of one that died
        self._lock = threading.Lock()  # `pending` and `_outbox` change together
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.process = self._start(self._outbox)

    def _start(self, outbox: queue.SimpleQueue[bytes | None]) -> subprocess.Popen[bytes]:
        """A new process, ready (its imports done), with its threads reading and writing."""
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**REUSED_MEMORY, **os.environ, **ONE_THREAD},
        )
        assert process.stdin is not None and process.stdout is not None
        for pipe in (process.stdin, process.stdout):
            _widen(pipe)
        if read_frame(process.stdout) is None:  # it sends its pid once its imports are done
            raise RuntimeError(f"a decode process exited while starting ({process.wait()})")
        for target, args, name in (
            (self._read, (process,), "glimpse-decode-read"),
            (self._write, (process, outbox), "glimpse-decode-write"),
        ):
            threading.Thread(target=target, args=args, name=name, daemon=True).start()
        return process

    def send(self, call: int, work: tuple[Any, ...], future: Future[Any]) -> None:
        if self.broken:
            future.set_exception(DecoderRestarted(self.broken))
            return
        message = frame(call, 0, work)
        with self._lock:
            self.pending[call] = future
            self._outbox.put(message)

    def _write(
        self, process: subprocess.Popen[bytes], outbox: queue.SimpleQueue[bytes | None]
    ) -> None:
        """Send queued calls, all that have queued in one write, until told to stop (None)."""
        stream = process.stdin
        assert stream is not None
        try:
            while True:
                frames = [outbox.get()]
                while frames[-1] is not None and not outbox.empty():
                    frames.append(outbox.get_nowait())
                stream.write(b"".join(f for f in frames if f is not None))
                stream.flush()
                if frames[-1] is None:
                    return  # closing stdin below: the child finishes what it has, then ends
        except (BrokenPipeError, ValueError):  # it died; the reader fails its calls
            return
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        """Answer each call as its frame arrives; when the child's stdout ends, fail what it
        still had and, unless the pool is closing, start a new child for the next calls."""
        stream = process.stdout
        assert stream is not None
        while (frame := read_frame(stream)) is not None:
            call, ok, payload = frame
            with self._lock:
                future = self.pending.pop(call, None)
            if future is None or not future.set_running_or_notify_cancel():
                continue
            try:
                value = pickle.loads(payload)
            except Exception as exc:  # noqa: BLE001 - an answer that cannot be read fails its call
                future.set_exception(exc)
                continue
            (future.set_result if ok else future.set_exception)(value)
        stream.close()
        code = process.wait()
        outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        with self._lock:
            lost, self.pending = self.pending, {}
            restart = not self.pool.closed
            if restart:  # calls sent from now on wait in a new outbox for the new process
                self._outbox.put(None)
                self._outbox = outbox
        for future in lost.values():
            if future.set_running_or_notify_cancel():
                future.set_exception(DecoderRestarted(_RESTARTED))
        if restart:
            log.error("decode process %d ended (exit code %d); starting another", process.pid, code)
            try:
                self.process = self._start(outbox)
            except Exception as exc:  # noqa: BLE001 - logged; every later call is refused
                log.critical("no decode process could be started: %s", exc, exc_info=True)
                self.broken = f"image decoding is unavailable ({exc}); restart glimpse"
                self._fail_queued()

    def _fail_queued(self) -> None:
        """Refuse the calls that were sent while a new process was being started, in vain."""
        with self._lock:
            lost, self.pending = self.pending, {}
        for future in lost.values():
            if future.set_running_or_notify_cancel():
                future.set_exception(DecoderRestarted(self.broken))

    def stop(self) -> None:
        self._outbox.put(None)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _widen(pipe: IO[bytes]) -> None:
    """Give `pipe` PIPE_BYTES of room where the system lets us; else it keeps its own."""
    setting = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if setting is None:
        return
    try:
        fcntl.fcntl(pipe.fileno(), setting, PIPE_BYTES)
    except OSError as exc:  # e.g. over /proc/sys/fs/pipe-max-size, or the user's pipe quota
        log.debug("decode pipe left at its default size: %s", exc)
