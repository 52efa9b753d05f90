"""A RADOS connection to a Ceph cluster, for the Rbd backend.

:func:`connect` opens one (``rados.Rados`` from a ceph.conf, as a Ceph
user, bounded by a timeout) and yields a :class:`Connection`, which opens
an I/O context per pool on first use; failures to reach the cluster are
the library's typed BackendUnavailable.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from imagebackend import exception

try:  # Debian's python3-rados (real-backends.md section 4)
    import rados
except ImportError:  # pragma: no cover - checked when a disk is used
    rados = None


class Connection:
    """One RADOS connection with its I/O contexts, for a block of calls."""

    def __init__(self, client):
        self.client = client
        self._ioctxs: dict[str, Any] = {}
        self._fsid: str | None = None

    def ioctx(self, pool: str):
        if pool not in self._ioctxs:
            try:
                self._ioctxs[pool] = self.client.open_ioctx(pool)
            except rados.ObjectNotFound:
                raise exception.BackendUnavailable(
                    image_type='rbd', reason=f'pool {pool!r} does not exist')
        return self._ioctxs[pool]

    @property
    def fsid(self) -> str:
        if self._fsid is None:
            self._fsid = self.client.get_fsid()
        return self._fsid

    def close(self) -> None:
        for ioctx in self._ioctxs.values():
            with contextlib.suppress(Exception):
                ioctx.close()
        self._ioctxs.clear()
        self.client.shutdown()


@contextlib.contextmanager
def connect(conffile: str, rados_id: str | None,
            timeout: int) -> Iterator[Connection]:
    """A connection for the ``with`` block (``conffile`` '' for Ceph's
    default, ``rados_id`` None for admin), closed after it."""
    try:
        client = rados.Rados(rados_id=rados_id, conffile=conffile or None)
    except rados.Error as e:
        raise exception.BackendUnavailable(
            image_type='rbd',
            reason=f'cannot read Ceph config {conffile!r}: {e}')
    try:
        # connect(timeout=) alone does not bound the wait for monitors
        # (librados 16 waits client_mount_timeout, 300 s); this does.
        client.conf_set('client_mount_timeout', str(timeout))
        client.connect(timeout=timeout)
    except rados.Error as e:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise exception.BackendUnavailable(
            image_type='rbd', reason=f'cannot connect to Ceph (config '
            f'{conffile or "default"}, user {rados_id or "admin"}): {e}')
    conn = Connection(client)
    try:
        yield conn
    finally:
        conn.close()
