"""torch's thread counts are set on purpose when the server starts."""

from __future__ import annotations

import os
import subprocess
import sys


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
