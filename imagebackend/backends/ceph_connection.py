"""RADOS connections to a Ceph cluster, for the Rbd backend.

A :class:`Cluster` is the one connection a
:class:`~imagebackend.backend.Backend` keeps per cluster (ceph.conf, Ceph
user): made on first use, shared by every disk and thread of the Backend
(librados handles and I/O contexts are thread-safe; librbd images opened
on them carry their own state), so a spawn connects once, not once per
disk or per call. :meth:`Cluster.session` lends it for a block of calls.

* Broken: a block that fails because the connection is shut down, in the
  wrong state or timed out drops it; the next session connects again (the
  failed call is not retried: it may not be safe to repeat).
* Fork: a child never uses its parent's connection (librados's threads
  and sockets are the parent's); it connects its own on first use, and
  leaves the parent's alone (shutting it down from the child would act on
  state that is not the child's).
* Closed: by :meth:`Cluster.close` (``Backend.close()``) once no session
  holds it, when the Cluster itself is dropped (its Backend gone without
  ``close()``: librados's ``Rados`` has no finalizer, so its threads and
  sessions would otherwise outlive it), and at interpreter exit for every
  cluster still open.

:class:`Connection` opens an I/O context per pool on first use; failures
to reach the cluster are the library's typed BackendUnavailable. A
librados or librbd call that fails is raised as :class:`RbdError`
(:func:`typed`).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import threading
import weakref
from typing import Any, Iterator

from imagebackend import exception

try:  # Debian's python3-rados / python3-rbd (real-backends.md section 4)
    import rados
    import rbd as librbd
except ImportError:  # pragma: no cover - checked when a disk is used
    rados = librbd = None

LOG = logging.getLogger(__name__)


class RbdError(exception.ImageBackendError):
    """A Ceph call failed."""

    msg_fmt = "Ceph: %(operation)s of %(target)s failed: %(reason)s"


@contextlib.contextmanager
def typed(operation: str, target: str) -> Iterator[None]:
    """Raise librados/librbd errors as :class:`RbdError`."""
    try:
        yield
    except (rados.Error, librbd.Error) as e:
        raise RbdError(operation=operation, target=target, reason=str(e))


class Connection:
    """One RADOS connection with its I/O contexts (one per pool)."""

    def __init__(self, client):
        self.client = client
        self.pid = os.getpid()
        self._ioctxs: dict[str, Any] = {}
        self._fsid: str | None = None
        self._lock = threading.Lock()
        # Kept by Cluster (under its lock): sessions holding it, whether
        # it is no longer lent out, whether it was shut down.
        self.users = 0
        self.retired = False
        self.closed = False

    def ioctx(self, pool: str):
        with self._lock:
            if pool not in self._ioctxs:
                try:
                    self._ioctxs[pool] = self.client.open_ioctx(pool)
                except rados.ObjectNotFound:
                    raise exception.BackendUnavailable(
                        image_type='rbd',
                        reason=f'pool {pool!r} does not exist')
            return self._ioctxs[pool]

    @property
    def fsid(self) -> str:
        if self._fsid is None:
            self._fsid = self.client.get_fsid()
        return self._fsid

    @property
    def usable(self) -> bool:
        """Connected, and in the process that connected."""
        return self.pid == os.getpid() and getattr(
            self.client, 'state', 'connected') == 'connected'

    def close(self) -> None:
        for ioctx in self._ioctxs.values():
            with contextlib.suppress(Exception):
                ioctx.close()
        self._ioctxs.clear()
        self.client.shutdown()


def _broken(error: BaseException) -> bool:
    """Whether ``error`` (librados's or librbd's) says the connection
    itself is no longer usable."""
    state_error = getattr(rados, 'RadosStateError', None)
    seen = 0
    # The library raises its own errors from librados's: look down the chain.
    while error is not None and seen < 4:
        if state_error is not None and isinstance(error, state_error):
            return True
        if getattr(error, 'errno', None) in (errno.ESHUTDOWN, errno.ENOTCONN,
                                             errno.ETIMEDOUT):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def _open(conffile: str, rados_id: str | None, timeout: int) -> Connection:
    """Connect (``conffile`` '' for Ceph's default, ``rados_id`` None for
    admin), bounded by ``timeout`` seconds."""
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
    return Connection(client)


# Every cluster still open, closed at interpreter exit; forgotten in a
# forked child (see _after_fork).
_OPEN: weakref.WeakSet[Cluster] = weakref.WeakSet()


class Cluster:
    """The connection to one cluster, shared, made on first use."""

    def __init__(self, conffile: str, rados_id: str | None, timeout: int):
        self.conffile = conffile
        self.rados_id = rados_id
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        #: Connections made so far (for tests and benchmarks).
        self.connects = 0
        # The connection lent now, seen by the finalizer without keeping
        # this Cluster alive: dropped, the Cluster shuts it down.
        self._held: list[Connection] = []
        weakref.finalize(self, _release, self._held)

    @contextlib.contextmanager
    def session(self) -> Iterator[Connection]:
        """The connection, for the ``with`` block (connecting if needed)."""
        conn = self._acquire()
        try:
            yield conn
        except BaseException as e:
            if _broken(e):
                LOG.warning('Ceph connection (%s) dropped after: %s',
                            self.conffile or 'default config', e)
                with self._lock:
                    self._retire(conn)
            raise
        finally:
            with self._lock:
                conn.users -= 1
                self._shut_if_done(conn)

    def _acquire(self) -> Connection:
        with self._lock:
            conn = self._conn
            if conn is not None and not conn.usable:
                self._retire(conn)
                conn = None
            if conn is None:
                # Under the lock: threads arriving meanwhile wait for this
                # one connection instead of each making their own.
                conn = self._conn = _open(self.conffile, self.rados_id,
                                          self.timeout)
                self._held[:] = [conn]
                self.connects += 1
                _OPEN.add(self)
            conn.users += 1
            return conn

    def _retire(self, conn: Connection) -> None:
        """No longer lend ``conn``; shut it down once no session holds it
        (under the lock)."""
        if self._conn is conn:
            self._conn = None
        conn.retired = True
        self._shut_if_done(conn)

    @staticmethod
    def _shut_if_done(conn: Connection) -> None:
        if not conn.retired or conn.users > 0 or conn.closed:
            return
        conn.closed = True
        if conn.pid != os.getpid():
            return  # a parent's (see the module doc)
        try:
            conn.close()
        except Exception:   # best effort: nothing depends on it
            LOG.debug('closing a Ceph connection failed', exc_info=True)

    def close(self) -> None:
        """Close the connection (when its last session ends); a later
        session connects again."""
        with self._lock:
            if self._conn is not None:
                self._retire(self._conn)

    def _forget(self) -> None:
        """In a forked child: the parent's connection, and the lock's
        state at the fork, are not this process's."""
        self._lock = threading.Lock()
        self._conn = None


def _release(held: list[Connection]) -> None:
    """A dropped Cluster's connection, shut down (no session can hold it:
    a session keeps its Cluster alive)."""
    for conn in held:
        conn.retired = True
        Cluster._shut_if_done(conn)
    held.clear()


def _after_fork() -> None:
    for cluster in list(_OPEN):
        cluster._forget()


def _close_all() -> None:
    for cluster in list(_OPEN):
        cluster.close()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_close_all)
