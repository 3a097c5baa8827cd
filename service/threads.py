"""torch's thread counts, chosen against the rest of the server's work.

A glimpse server runs four kinds of work at once: the event loop (HTTP and gRPC
parsing, JSON), the codec pool (tabular bodies, and images when there are no decode
processes), one worker thread per model (the forward passes), and beside the process its
decode processes (service.decode_pool: image uploads and overlays).
torch's intra-op pool would by default take every core for each forward pass and
spin-wait between ops, so under load it fights the decode work for the same cores and
both slow down. glimpse therefore gives torch all cores but one (at least one), and
one inter-op thread: dynamic batching, not op-level parallelism, is what fills the
cores under load, and a lone request keeps a core for its decode and encode.
`--torch-threads N` (GLIMPSE_TORCH_THREADS) overrides the choice; bench/serve.py
measures it (bench/README.md).

numpy's BLAS gets one thread, in the server and in its decode processes (their
environment: service.decode_pool.ONE_THREAD).
Its only products here are small ones (an overlay's map upsampled: 256 x 12 by 12 x 256),
and OpenBLAS would still split them over every core and spin its threads between calls:
at c=4 that cost /heatmaps a third of its throughput.
"""

from __future__ import annotations

import os

import torch
from threadpoolctl import threadpool_limits


def configure(requested: int = 0) -> int:
    """Set torch's intra-op threads to `requested` (0: cores - 1, at least 1) and its
    inter-op threads to 1 once, and numpy's BLAS to one thread; return the intra-op count."""
    threadpool_limits(1, user_api="blas")
    threads = requested or max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran in this process
        pass
    return threads
