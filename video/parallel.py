"""Thread parallelism over the frames / faces of a video batch.

Why: the per-frame work of the video chain (MTCNN on one frame, the Stage II networks on one 128 px face) is
many small operators that torch's intra-op threads split poorly; whole frames or faces on separate cores scale
better. A batch is cut into contiguous chunks, one per worker thread, each worker running torch with ONE
intra-op thread (torch's thread count is per thread). A batch of one item (frame by frame) or a single thread
runs in the calling thread with torch's own threads, so ``--batch_size 1`` is the plain sequential chain.

The chunks' results come back in order. The work must not draw from a shared random generator (the order of the
draws would depend on the scheduling): draw before the split, or give each item its own seeded generator (the
video chain's sensor noise: one generator per face, ``video.deid.face_noise_generator``).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_key: tuple[int, int] | None = None
_pool_lock = threading.Lock()


def _worker_pool(workers: int) -> ThreadPoolExecutor:
    """Worker threads with one torch intra-op thread each; one pool per process (a forked child cannot use its
    parent's threads)."""
    global _pool, _pool_key
    with _pool_lock:
        if _pool_key != (os.getpid(), workers):
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="video",
                                       initializer=torch.set_num_threads, initargs=(1,))
            _pool_key = (os.getpid(), workers)
        return _pool


def cpu_workers(device: torch.device | str) -> int:
    """Worker threads for a batch on ``device``: this thread's torch thread count on the CPU, 1 elsewhere (a GPU
    runs a whole batch best as one)."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


def split(n: int, workers: int | None = None) -> list[slice]:
    """range(n) as at most ``workers`` (default: this thread's torch thread count) contiguous, near-equal
    slices."""
    workers = max(1, min(torch.get_num_threads() if workers is None else int(workers), n))
    step = -(-n // workers) if n else 1
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def parallel_map(fn: Callable[[slice], T], n: int, workers: int | None = None) -> list[T]:
    """``[fn(part) for part in split(n, workers)]``, the parts computed concurrently (see the module docstring);
    ``fn`` runs under no_grad in the workers (grad mode is per thread)."""
    parts = split(n, workers)
    if len(parts) < 2:
        return [fn(p) for p in parts]

    def run(part: slice) -> T:
        with torch.no_grad():
            return fn(part)

    return list(_worker_pool(len(parts)).map(run, parts))


def prefetch(items: Iterator[T]) -> Iterator[T]:
    """``items`` with the next one produced on a background thread while the caller works on the current one
    (e.g. decoding the next batch of frames while this one is computed; PyAV releases the GIL while it decodes)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as ex:
        done = object()
        future = ex.submit(next, items, done)
        while True:
            item = future.result()
            if item is done:
                return
            future = ex.submit(next, items, done)
            yield item
