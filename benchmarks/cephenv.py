"""A throwaway Ceph cluster for the Rbd benchmarks.

tests/functional/ceph_env.py's :class:`CephCluster` (one mon, one memstore
OSD on 127.0.0.1, free ports, cephx) with its own ``start`` and ``stop``,
in a context manager: every daemon is stopped on exit, also when starting
or measuring fails. One pool (``rbd``), the one the disks go to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from typing import Iterator

from tests.functional import ceph_env

# Unix socket paths (the daemons' admin sockets) must stay under 108 bytes.
_MAX_SOCKET = 100


@dataclasses.dataclass(frozen=True)
class Cluster:
    conf: str
    pool: str
    fsid: str
    start_seconds: float


@contextlib.contextmanager
def cluster(directory: str) -> Iterator[Cluster]:
    """A started cluster under ``directory`` (or, if that path is too long
    for the daemons' sockets, a short temporary one, removed at the
    end); stopped on exit."""
    short = None
    if len(os.path.join(directory, 'run', 'osd.0.asok')) > _MAX_SOCKET:
        directory = short = tempfile.mkdtemp(prefix='ibbench-ceph-')
    os.makedirs(directory, exist_ok=True)
    c = ceph_env.CephCluster(directory)
    t0 = time.monotonic()
    try:
        c.start(pools=(ceph_env.POOL,))
        yield Cluster(conf=c.conf, pool=ceph_env.POOL, fsid=c.fsid,
                      start_seconds=time.monotonic() - t0)
    finally:
        try:
            c.stop()
        finally:
            if short:
                shutil.rmtree(short, ignore_errors=True)
