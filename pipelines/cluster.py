"""The Dask client of a batch job: an embedded LocalCluster or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from wsi.errors import ClusterError

__all__ = ["dask_client"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _environ_restored(keys: dict[str, Any]) -> Iterator[None]:
    """Undo the nanny's ``os.environ.update(pre-spawn-environ)`` in this process on exit.

    Without this, OMP_NUM_THREADS=1 meant for the workers stayed set in the driver, and a
    later torch stage in the same process (or any subprocess it starts) ran on one core.
    """
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    workers: int | None = None,
    memory_limit: str = "2GiB",
    threads_per_worker: int = 1,
) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler`` if given, else a LocalCluster.

    The LocalCluster has ``workers`` single-threaded worker processes (default: the
    number of cores), started with ``spawn`` so no open slide handle crosses a fork.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {scheduler} ({err}). Check the address "
                "and that the scheduler is running, or leave out --scheduler for a local cluster."
            ) from err
        log.info("using the Dask scheduler at %s", scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or os.cpu_count() or 1
    worker_env = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}
    with (
        _environ_restored(worker_env),
        dask.config.set(
            {
                "distributed.worker.multiprocessing-method": "spawn",
                "distributed.worker.daemon": False,
                "distributed.logging.distributed": "warning",
                # the statistical profiler samples every thread each 10 ms and costs the tile
                # tasks GIL time for a view nobody opens in batch runs
                "distributed.worker.profile.enabled": False,
                # Dask's default MALLOC_TRIM_THRESHOLD_ also switches off glibc's adaptive mmap
                # threshold, so every tile-sized buffer became a fresh mmap + page faults: the
                # tile stage ran 1.4x slower in workers than in a plain process
                "distributed.nanny.pre-spawn-environ": worker_env,
            }
        ),
    ):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=threads_per_worker,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # task errors are reported by the driver
        )
        client = Client(cluster)
        log.info("started a LocalCluster with %d worker processes", n)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
