"""Thread counts are set on purpose: torch's when the server starts, and numpy's BLAS (one
thread) in the server and in its decode processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from service.decode_pool import DecodePool


def test_threads_default_to_all_cores_but_one_and_one_inter_op() -> None:
    code = (
        "import torch; from service.threads import configure; n = configure(0); "
        "print(n, torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    expected = max(1, (os.cpu_count() or 1) - 1)
    assert out.stdout.split() == [str(expected), str(expected), "1"], out.stderr


def test_an_explicit_count_wins() -> None:
    code = (
        "import torch; from service.threads import configure; configure(3); "
        "print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "3", out.stderr


BLAS_THREADS = (
    "[i['num_threads'] for i in __import__('threadpoolctl').threadpool_info() "
    "if i['user_api'] == 'blas']"
)


def test_numpy_s_blas_gets_one_thread_and_torch_keeps_its_own() -> None:
    code = (
        "import numpy, torch; from service.threads import configure; n = configure(0); "
        f"print({BLAS_THREADS}, n == torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    blas, torch_kept = out.stdout.rsplit(" ", 1)
    assert blas.strip("[]") and set(blas.strip("[]").split(", ")) == {"1"}, out.stdout
    assert torch_kept.strip() == "True"


def test_a_decode_process_s_blas_has_one_thread() -> None:
    pool = DecodePool(1, here=False)
    try:
        numpy_loaded = asyncio.run(pool.run(eval, "__import__('numpy') is not None"))
        threads = asyncio.run(pool.run(eval, BLAS_THREADS))
    finally:
        pool.close()
    assert numpy_loaded and threads and set(threads) == {1}
