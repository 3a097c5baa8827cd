"""What runs inside a decode process (service.decode_pool), and the frames both sides speak.

A frame is a call id (8 bytes), an ok flag (1 byte: 1 a return value, 0 an exception; 0 on
the way in), the payload's length (4 bytes), then the pickled payload: on the way in a
function of `service.decoding` and its arguments, on the way out its return value or the
exception it raised. This module imports only the standard library; `serve` loads the
decoding modules (never torch) before it says it is ready.

Example: ``python -c "from service.decode_child import serve; serve()"`` (the pool starts it)
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from typing import IO, Any

HEADER = struct.Struct(">QBI")


def read_frame(stream: IO[bytes]) -> tuple[int, int, bytes] | None:
    """The next frame (call id, ok flag, payload), or None at the end of the stream."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    call, ok, length = HEADER.unpack(header)
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return call, ok, payload


def frame(call: int, ok: int, value: Any) -> bytes:
    """One frame's bytes: the header, then `value` pickled (a call's work on the way in, its
    answer on the way out)."""
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(call, ok, len(payload)) + payload


def _write_frame(stream: IO[bytes], call: int, ok: int, value: Any) -> None:
    stream.write(frame(call, ok, value))


def serve() -> None:
    """A decode process's loop: run each call that arrives on stdin, answer on stdout, until
    stdin ends. Signals meant for the server's process group are the server's to act on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Ready means ready: the decoding modules (numpy, Pillow, libspng) and the overlay colours
    # (matplotlib) are loaded before the pid goes out, not on the first upload and overlay.
    from service.decoding import prepare  # noqa: PLC0415 - the child's imports, not the server's

    prepare()
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    _write_frame(answers, 0, 1, os.getpid())
    answers.flush()
    while (frame := read_frame(requests)) is not None:
        call, _, payload = frame
        try:
            work, args = pickle.loads(payload)
            value, ok = work(*args), 1
        except Exception as exc:  # noqa: BLE001 - handed back to the caller, as raised
            value, ok = exc, 0
        try:
            _write_frame(answers, call, ok, value)
        except Exception as exc:  # noqa: BLE001 - e.g. a value that does not pickle
            _write_frame(answers, call, 0, RuntimeError(f"the answer could not be sent: {exc}"))
        answers.flush()
