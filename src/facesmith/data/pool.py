"""The process pool `facesmith prepare` runs its per-image work in, and the lock on its output folder.

Owns: worker start-up (one torch thread each), the pool's start method, workers that end with the run
that started them (also after kill -9), results in task order, and `DIR/.lock`. What the work is, is
`prepare.py`'s. Written here rather than taken from a library: `concurrent.futures` gives the pool, but
not workers that outlive neither their owner nor its lock.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from facesmith.errors import FacesmithError


def run_in_order(work: Callable[[Any], Any], tasks: list, workers: int) -> Iterator[Any]:
    """`work(task)` for each task, results in task order; in this process for one worker, else in a pool."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(tasks) < 2:
        _init_worker()
        yield from map(work, tasks)
        return
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=_pool_context(), initializer=_init_worker, initargs=(os.getpid(),)
    ) as pool:
        # Chunks keep the inter-process overhead small; map keeps the order, which dedup depends on.
        yield from pool.map(work, tasks, chunksize=8)


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold DIR/.lock so a second run on the same folder stops instead of interleaving decisions."""
    handle = open(out / ".lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: no advisory locks; runs are not guarded
            pass
        except OSError:
            raise FacesmithError(
                f"output {out} is being written by another facesmith prepare: wait for it"
            ) from None
        yield
    finally:
        handle.close()


def _init_worker(owner: int | None = None) -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; MTCNN's small ops get slower with more threads
    if owner is not None:
        _die_with_owner(owner)


def _die_with_owner(owner: int) -> None:
    """End this pool worker within a second of the prepare process ``owner`` ending, also by kill -9,
    which runs no cleanup, so the pool can't stop its workers. A thread polls, rather than Linux's
    PR_SET_PDEATHSIG: a worker's parent is the forkserver, which by design lives as long as its workers."""

    def watch() -> None:
        while _alive(owner):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="facesmith-owner-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one, else spawn; never fork. A worker then holds none of this process's
    descriptors, DIR/.lock included, so the kernel frees the lock the moment this process dies, even by
    kill -9, and a rerun resumes. The forkserver imports the detector (torch) once for all workers and
    all runs of this process; workers see the environment of the moment it started."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["facesmith.data.faces", "facesmith.data.prepare"])
    return context
