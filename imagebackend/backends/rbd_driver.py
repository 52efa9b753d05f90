"""``Rbd.driver``: Nova's ``RBDDriver`` names over the library's Ceph access.

Nova's Rbd image keeps an ``nova.storage.rbd_utils.RBDDriver`` as
``image.driver``, and Nova's code and tests reach through it (``pool``,
``rbd_user``, ``ceph_conf``, ``get_mon_addrs()``, ``size(name)``,
``exists(name)``, ``parent_info``, ``create_snap``...). :class:`RbdDriver`
gives an Rbd disk the same names with the same arguments, done with what
the disk already does: its connection (librados/librbd in-process, typed
errors), its ``rbd import``, its removal (snapshots first, retried while a
watcher lets go). Nothing is added beyond naming, except where Nova's
methods must differ from the disk's (any image of the pool, by name).

Differences from Nova, on purpose:

* ``resize`` only grows (CannotShrink), as the disk's ``resize_image``;
* ``remove_image`` also removes the image's snapshots (unprotecting them;
  refused while a snapshot has clones), as the disk's removal does; Nova
  logs "has snapshots" and leaves the image;
* ``is_cloneable`` accepts iso as well as raw (raw bytes both; Nova
  refuses iso here and downloads it);
* errors are the library's (``DiskNotFound``, ``RbdError``,
  ``SnapshotNotFound``); ``parse_url`` and ``parent_info`` raise
  ImageUnacceptable as Nova's do;
* ``get_pool_info`` is not offered: Nova runs ``ceph df`` (served by a
  ceph-mgr), which the library never needs.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from imagebackend import exception
from imagebackend.backends import rbd_locations
from imagebackend.backends.ceph_connection import RbdError, typed

# The optional bindings (None where not installed), imported once.
from imagebackend.backends.ceph_connection import librbd, rados


class SnapshotNotFound(exception.ImageBackendError):
    msg_fmt = "RBD image %(image)s has no snapshot %(snapshot)s."


class RbdDriver:
    """Nova's ``RBDDriver`` interface for one Rbd disk (``disk.driver``)."""

    def __init__(self, disk):
        self._disk = disk

    # -- configuration, as Nova's attributes --------------------------------

    @property
    def pool(self) -> str:
        return self._disk.pool

    @property
    def rbd_user(self) -> str | None:
        return self._disk.rbd_user

    @property
    def ceph_conf(self) -> str:
        return self._disk.ceph_conf

    @property
    def rbd_connect_timeout(self) -> int:
        return self._disk.connect_timeout

    def ceph_args(self) -> list[str]:
        """``--id``/``--conf`` for ceph CLI commands."""
        return self._disk._cli_args()

    # -- the cluster ----------------------------------------------------------

    def get_mon_addrs(self, strip_brackets: bool = True
                      ) -> tuple[list[str], list[str]]:
        """(hosts, ports) of the monitors; IPv6 hosts in brackets with
        ``strip_brackets=False`` (libguestfs wants ``[::1]:6789``)."""
        hosts, ports = self._disk.mon_addrs()
        if not strip_brackets:
            hosts = [f'[{h}]' if ':' in h else h for h in hosts]
        return hosts, ports

    def get_fsid(self) -> str:
        with self._disk._connect() as conn:
            return conn.fsid

    @staticmethod
    def parse_url(url: str) -> list[str]:
        """``rbd://fsid/pool/image/snap`` -> [fsid, pool, image, snap];
        ImageUnacceptable otherwise (Nova's)."""
        try:
            return list(rbd_locations.parse_location(url))
        except exception.InvalidInput as e:
            raise exception.ImageUnacceptable(image_id=url, reason=str(e))

    def is_cloneable(self, image_location: Any, image_meta: Any) -> bool:
        """Whether this cluster can clone ``image_location`` (``{'url':
        ...}`` or a URL) of the image ``image_meta`` describes."""
        return not self.why_not_cloneable(image_location, image_meta)

    def why_not_cloneable(self, image_location: Any, image_meta: Any) -> str:
        """'' if ``is_cloneable``, else why not (Nova's rules: an rbd://
        URL, the image raw, this cluster's fsid, the snapshot readable)."""
        meta = rbd_locations.image_view(image_meta, 'image')
        url = rbd_locations.location_url(image_location)
        view = rbd_locations.ImageView(id=meta.id,
                                       disk_format=meta.disk_format,
                                       urls=(url,) if url else ())
        if not view.rbd_urls:
            return f'{url or image_location!r} is not an rbd:// location'
        with self._disk._connect() as conn:
            return self._disk._cloneable_parent(conn, view, 'location')[1]

    def clone(self, image_location: Any, dest_name: str,
              dest_pool: str | None = None) -> None:
        """Clone the snapshot at ``image_location`` as ``dest_name`` in
        ``dest_pool`` (default: this pool); all or nothing. DiskExists if
        the name is taken."""
        url = rbd_locations.location_url(image_location) or ''
        _fsid, pool, image, snap = self.parse_url(url)
        dest_pool = dest_pool or self.pool
        target = f'{dest_pool}/{dest_name}'
        with self._disk._connect() as conn:
            try:
                librbd.RBD().clone(conn.ioctx(pool), image, snap,
                                   conn.ioctx(dest_pool), dest_name)
            except librbd.ImageExists:
                # Someone else's (made meanwhile, perhaps): left alone.
                raise exception.DiskExists(location=target)
            except (rados.Error, librbd.Error) as e:
                # The name was free: whatever is there now is ours.
                with contextlib.suppress(Exception):
                    self._disk._remove_image(conn, dest_pool, dest_name)
                raise RbdError(operation='clone',
                               target=f'{pool}/{image}@{snap}',
                               reason=str(e))

    # -- images by name -------------------------------------------------------

    @contextlib.contextmanager
    def _image(self, name: str, pool: str | None = None,
               snapshot: str | None = None,
               read_only: bool = False) -> Iterator[Any]:
        pool = pool or self.pool
        with self._disk._connect() as conn:
            try:
                img = librbd.Image(conn.ioctx(pool), name, snapshot=snapshot,
                                   read_only=read_only)
            except librbd.ImageNotFound:
                raise exception.DiskNotFound(location=f'{pool}/{name}')
            with img, typed('use', f'{pool}/{name}'):
                yield img

    def exists(self, name: str, pool: str | None = None,
               snapshot: str | None = None) -> bool:
        try:
            with self._image(name, pool, snapshot, read_only=True):
                return True
        except exception.DiskNotFound:
            return False

    def size(self, name: str) -> int:
        with self._image(name, read_only=True) as img:
            return img.size()

    def resize(self, name: str, size: int) -> None:
        """Grow ``name`` to ``size`` bytes (the disk's own: through its
        ``resize_image``, which keeps its record in step)."""
        if name == self._disk.rbd_name:
            self._disk.resize_image(size)
            return
        with self._image(name) as img:
            current = img.size()
            if size < current:
                raise exception.CannotShrink(path=f'{self.pool}/{name}',
                                             current=current, size=size)
            if size > current:
                img.resize(size)

    def parent_info(self, volume: str, pool: str | None = None
                    ) -> tuple[str, str, str]:
        """(pool, image, snapshot) of ``volume``'s parent;
        ImageUnacceptable if it has none (Nova's)."""
        with self._image(volume, pool, read_only=True) as img:
            try:
                return tuple(img.parent_info())
            except librbd.ImageNotFound:
                raise exception.ImageUnacceptable(
                    image_id=volume, reason='no usable parent snapshot')

    def flatten(self, volume: str, pool: str | None = None) -> None:
        with self._image(volume, pool) as img:
            img.flatten()

    def remove_image(self, name: str) -> None:
        """Remove ``name`` (and its snapshots); nothing if it is gone."""
        self.destroy_volume(name)

    def destroy_volume(self, volume: str, pool: str | None = None) -> None:
        with self._disk._connect() as conn:
            self._disk._remove_image(conn, pool or self.pool, volume)

    def cleanup_volumes(self, filter_fn: Callable[[str], bool]) -> None:
        """Remove every image of the pool ``filter_fn`` accepts."""
        with self._disk._connect() as conn:
            with typed('listing', self.pool):
                names = librbd.RBD().list(conn.ioctx(self.pool))
            for name in filter(filter_fn, names):
                self._disk._remove_image(conn, self.pool, name)

    def import_image(self, base: str, name: str) -> None:
        """``rbd import`` the raw file ``base`` as ``name``."""
        self._disk._import_file(base, 'raw', name)

    # -- snapshots ------------------------------------------------------------

    def create_snap(self, volume: str, name: str, pool: str | None = None,
                    protect: bool = False) -> None:
        with self._image(volume, pool) as img:
            img.create_snap(name)
            if protect and not img.is_protected_snap(name):
                img.protect_snap(name)

    def remove_snap(self, volume: str, name: str,
                    ignore_errors: bool = False, pool: str | None = None,
                    force: bool = False) -> None:
        """Remove snapshot ``name``; a protected one only with ``force``
        (else it is kept), a missing one is nothing to do."""
        with self._image(volume, pool) as img:
            if name not in {s['name'] for s in img.list_snaps()}:
                return
            if img.is_protected_snap(name):
                if not force:
                    return
                img.unprotect_snap(name)
            img.remove_snap(name)

    def rollback_to_snap(self, volume: str, name: str) -> None:
        with self._image(volume) as img:
            if name not in {s['name'] for s in img.list_snaps()}:
                raise SnapshotNotFound(image=f'{self.pool}/{volume}',
                                       snapshot=name)
            img.rollback_to_snap(name)

