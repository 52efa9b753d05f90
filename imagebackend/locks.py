"""One lock per instance, across processes, around every change to its disks.

Whoever decides something about an instance's disks (grow or refuse, exists
or create, a ``creating`` record is a dead creation or one in progress) must
decide it under this lock, from records read under it, and keep it until the
change is made. It is an oslo.concurrency external lock: a file
``ib-instance-<uuid>`` in the lock directory (``<instances_path>/locks``,
beside the image cache's), so every process on the host (and every host
sharing instances_path over NFS) serialises with the others.

oslo's locks are not re-entrant (its in-process semaphore would deadlock a
thread taking the same lock twice), and its semaphores are keyed by name
only, so two hosts' instances_path in one process would share one. This
module keys both by the lock file's path and lets the thread that holds a
lock take it again: a driver may hold it around several flows, each of which
takes it too.

The records store's own ``records-<uuid>`` lock stays inside this one: it
only makes each read-modify-write of ``disks.json`` atomic.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

from oslo_concurrency import lockutils

from imagebackend import names

LOCK_PREFIX = 'ib-'

_held = threading.local()            # per thread: {lock file: depth}
_semaphores: dict[str, lockutils.Semaphores] = {}
_semaphores_guard = threading.Lock()


def lock_dir(instances_path: str) -> str:
    """The lock directory of a host whose instances_path is given."""
    return os.path.join(instances_path, names.LOCKS_DIR)


def _directory(conf_or_lock_path: Any) -> str:
    if isinstance(conf_or_lock_path, (str, os.PathLike)):
        path = os.fspath(conf_or_lock_path)
    else:
        path = lock_dir(conf_or_lock_path.instances_path)
    return os.path.realpath(path)


def _name(uuid: str) -> str:
    return f'instance-{names.check_instance_uuid(uuid)}'


def _depths() -> dict[str, int]:
    depths = getattr(_held, 'depths', None)
    if depths is None:
        depths = _held.depths = {}
    return depths


def _semaphores_for(directory: str) -> lockutils.Semaphores:
    with _semaphores_guard:
        return _semaphores.setdefault(directory, lockutils.Semaphores())


@contextlib.contextmanager
def instance_lock(conf_or_lock_path: Any, uuid: str) -> Iterator[None]:
    """Hold instance ``uuid``'s lock for the block.

    ``conf_or_lock_path`` is a config with ``instances_path`` (the lock
    lives in its ``locks`` directory) or the lock directory itself. Blocks
    until no other process or thread holds it; the thread already holding
    it gets it again at once (the outermost block releases it).
    """
    directory = _directory(conf_or_lock_path)
    name = _name(uuid)
    key = os.path.join(directory, LOCK_PREFIX + name)
    depths = _depths()
    if depths.get(key):
        depths[key] += 1
        try:
            yield
        finally:
            depths[key] -= 1
        return
    os.makedirs(directory, exist_ok=True)
    with lockutils.lock(name, lock_file_prefix=LOCK_PREFIX, external=True,
                        lock_path=directory,
                        semaphores=_semaphores_for(directory)):
        depths[key] = 1
        try:
            yield
        finally:
            del depths[key]


def held(conf_or_lock_path: Any, uuid: str) -> bool:
    """Whether this thread holds instance ``uuid``'s lock."""
    key = os.path.join(_directory(conf_or_lock_path),
                       LOCK_PREFIX + _name(uuid))
    return bool(_depths().get(key))
