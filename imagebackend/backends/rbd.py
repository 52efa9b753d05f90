"""Rbd: each disk is an RBD image ``<instance uuid>_<disk name>`` in Ceph.

Disks live in ``[libvirt] images_rbd_pool`` of the cluster that
``[libvirt] images_rbd_ceph_conf`` names, reached as ``[libvirt] rbd_user``
(connections time out after ``rbd_connect_timeout`` s). Every host using
that pool sees the same disks: the storage is shared, so cold migration
copies nothing (``send_to`` has nothing to send), live migration prepares
nothing, and ``is_shared_block_storage()`` is true. The disk's record (in
the instance directory, travelling with it as ``disks.json``) says where
it lives; a host whose pool option differs still finds it there.

Legacy path (Nova's ``Rbd.create_image``, used by ``cache()`` and so by the
shim): if the RBD image does not exist, the template is prepared in
``_base`` and ``rbd import``-ed as the disk itself (a full copy, no clone),
its size verified and grown. ``cache()`` records it like any other disk.

Everything else a Ceph disk needs lives in this class (its parts are
listed below), not in the driver: ``exists``
and sizes through librbd; ``resize_image`` through librbd (grow only);
``remove_disk`` removes the image and its snapshots, idempotently;
``libvirt_info`` renders a network ``<disk>`` (protocol rbd, monitors from
the cluster's monmap, read in-process, ``<auth>``/``<secret type='ceph'>``
from ``rbd_user``/``rbd_secret_uuid``); and Nova's hooks ``create_snap``,
``remove_snap``, ``rollback_to_snap`` (the ``nova-resize`` snapshot the
migration flows keep), ``clone``, ``flatten``, ``direct_snapshot``,
``cleanup_direct_snapshot`` and ``import_file``.

``disk.driver`` is Nova's ``image.driver`` (an ``RBDDriver``): the same
method names over this disk's Ceph access (:mod:`.rbd_driver`); ``exists``
and ``get_disk_size`` go through it, as Nova's do.

``snapshot_extract`` runs ``qemu-img convert -f raw -O <fmt> rbd:<pool>/
<name>[:id=..][:conf=..] <target>`` when qemu-img has the rbd block driver.
Debian ships that driver in a separate package (``qemu-block-extra``); when
qemu-img answers ``Unknown protocol 'rbd'`` (remembered for the process),
the disk is exported through librbd instead: its allocated extents are read
into a sparse raw file next to the target, which is the result for raw or
is converted by ``qemu-img convert -f raw``.

The class is put together from one module per part of that story:

* :mod:`.rbd_create`: native creation (pool bases, clones, imports);
* :mod:`.rbd_plans`: what native creation would do (``plan_create``);
* :mod:`.rbd_clone`: Nova's ``clone`` from an image's locations and the
  Glance store copy;
* :mod:`.rbd_libvirt`: the network ``<disk>``, ``get_model``, monitors;
* :mod:`.rbd_snapshots`: snapshots, the raw export, direct snapshots;
* :mod:`.rbd_driver`: ``disk.driver``, Nova's ``RBDDriver`` names;
* :mod:`.ceph_connection`: the Backend's cluster connection, RbdError;
* :mod:`.rbd_locations`: image metadata, rbd:// locations and paths.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Any, ClassVar, ContextManager

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import image
from imagebackend import names
from imagebackend import qemu
from imagebackend.backends import ceph_connection
from imagebackend.backends import rbd_clone
from imagebackend.backends import rbd_create
from imagebackend.backends import rbd_driver
from imagebackend.backends import rbd_libvirt
from imagebackend.backends import rbd_plans
from imagebackend.backends import rbd_snapshots
from imagebackend.backends.ceph_connection import RbdError
from imagebackend.backends.rbd_create import META_SOURCE  # noqa: F401
from imagebackend.backends.rbd_libvirt import monitors  # noqa: F401 (API)
from imagebackend.backends.rbd_locations import (  # noqa: F401 (API)
    BASE_SNAP, CloneNotPossible, StoreCopyFailed, StoreCopyTimeout,
    parse_location, parse_path)
from imagebackend.backends.rbd_plans import RANDOM  # noqa: F401

# The optional bindings (None where not installed), imported once.
from imagebackend.backends.ceph_connection import librbd, rados

LOG = logging.getLogger(__name__)

_Connection = ceph_connection.Connection

# Removing an image some client still watches (a VM, or a client killed
# before its watch expired) fails with "busy" for a while (Nova: 12 x 5 s).
REMOVE_RETRIES = 30
REMOVE_RETRY_INTERVAL = 1.0


def _require_bindings() -> None:
    if librbd is None or rados is None:
        raise exception.BackendUnavailable(
            image_type='rbd', reason='the python3-rados/python3-rbd '
            'bindings are not importable')


class Rbd(rbd_create.RbdCreate, rbd_plans.RbdPlans, rbd_clone.RbdClone,
          rbd_libvirt.RbdLibvirt, rbd_snapshots.RbdSnapshots,
          image.SelfContained, image.Image):
    """A disk that is an RBD image (a clone of a pool base, or a copy)."""

    image_type = 'rbd'
    capabilities = image.Capabilities(shared_storage=True,
                                      file_in_instance_path=False,
                                      backing_in_cache=False,
                                      native_create=True)
    SUPPORTS_CLONE = True
    # None: not known yet whether qemu-img can open rbd: paths here.
    _qemu_has_rbd: ClassVar[bool | None] = None

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None, *, backend, record=None):
        super().__init__(instance, disk_name, path, disk_info_mapping,
                         backend=backend, source_type='network',
                         driver_format='raw', record=record)
        libvirt = self.conf.libvirt
        self.ceph_conf = libvirt.images_rbd_ceph_conf or ''
        self.rbd_user = libvirt.rbd_user or None
        self.connect_timeout = libvirt.rbd_connect_timeout
        # What the legacy path did, for the record cache() writes.
        self._legacy_how: dict[str, Any] | None = None
        if path is not None:
            pool, name = parse_path(path)
            if disk_name is None and instance is not None:
                found = names.disk_name_from(name, self.instance_uuid)
                if found is not None:
                    self.disk_name = names.check_disk_name(found)
        else:
            if instance is None or disk_name is None:
                raise exception.InvalidInput(
                    reason='a disk needs an instance and a name, or a path')
            pool = libvirt.images_rbd_pool
            name = f'{self.instance_uuid}_{disk_name}'
            record = self.record
            if record is not None and record.backend == self.image_type:
                # The disk is where its record says (another host's pool
                # option may differ), not where this host would put it.
                pool, recorded = parse_path(record.location)
                if recorded != name:
                    # A record naming another image (disks.json travels
                    # with an instance) would hand this disk's resize or
                    # delete to a disk that is not this one.
                    raise exception.CorruptRecord(
                        location=f'{record.instance}/{record.name}',
                        reason=f'location {record.location!r} is not '
                               f'<pool>/{name}')
        if not pool:
            raise exception.InvalidInput(
                reason='[libvirt] images_rbd_pool must not be empty')
        self.pool = pool
        self.rbd_name = name
        self.path = self._rbd_path(pool, name)
        # Nova's image.driver (an RBDDriver): its names over this disk's
        # Ceph access, for Nova's code and tests that reach through it.
        self.driver = rbd_driver.RbdDriver(self)

    # -- identity ------------------------------------------------------------

    @property
    def location(self) -> str:
        return f'{self.pool}/{self.rbd_name}'

    def _rbd_path(self, pool: str, name: str) -> str:
        """Nova's path string (qemu's rbd: filename syntax)."""
        path = f'rbd:{pool}/{name}'
        if self.rbd_user:
            path += f':id={self.rbd_user}'
        if self.ceph_conf:
            path += f':conf={self.ceph_conf}'
        return path

    def _cli_args(self) -> list[str]:
        args = []
        if self.rbd_user:
            args += ['--id', self.rbd_user]
        if self.ceph_conf:
            args += ['--conf', self.ceph_conf]
        return args

    # -- the cluster ----------------------------------------------------------

    def _cluster(self) -> ceph_connection.Cluster:
        """This Backend's connection to the disk's cluster (one per ceph
        config and user, shared by its disks and threads)."""
        key = (__name__, self.ceph_conf, self.rbd_user, self.connect_timeout)
        return self._backend.shared(key, lambda: ceph_connection.Cluster(
            self.ceph_conf, self.rbd_user, self.connect_timeout))

    def _connect(self) -> ContextManager[_Connection]:
        """The cluster connection, for a ``with`` block."""
        _require_bindings()
        return self._cluster().session()

    @contextlib.contextmanager
    def _open(self, conn: _Connection, read_only: bool = False):
        """This disk's RBD image, open; DiskNotFound if it is not there."""
        try:
            img = librbd.Image(conn.ioctx(self.pool), self.rbd_name,
                               read_only=read_only)
        except librbd.ImageNotFound:
            raise exception.DiskNotFound(location=self.location)
        with img:
            yield img

    @staticmethod
    def _image_exists(ioctx, name: str) -> bool:
        try:
            librbd.Image(ioctx, name, read_only=True).close()
            return True
        except librbd.ImageNotFound:
            return False

    def exists(self) -> bool:
        return self.driver.exists(self.rbd_name)

    def _make_durable(self) -> None:
        """Nothing to flush: Ceph acknowledges a write (librbd's, ``rbd
        import``'s, a clone's or resize's metadata) only once every
        replica has it in its journal, so whatever made the disk is
        durable when the call returned."""

    # -- legacy (Nova's Rbd.create_image) -------------------------------------

    def create_image(self, prepare_template, base, size, safe=False, *args,
                     **kwargs):
        self._legacy_how = None
        if not self.exists():
            prepare_template(target=base, *args, **kwargs)
        # prepare_template may have cloned the disk already (Nova's
        # clone_fallback_to_fetch calls clone()); else import the template.
        if not self.exists():
            self._require_made(prepare_template, base)
            fmt, _size = self.image_cache.legacy_base(base, safe)
            converted = self._import_file(base, fmt, self.rbd_name)
            why = ("Nova's create_image: the cached template is imported "
                   'as the disk')
            if converted:
                why += f' (converted from {fmt} to raw first)'
            self._legacy_how = {'how': 'import', 'why': why,
                                'imported': os.path.basename(base)}
        self.verify_base_size(base, size)
        if size and size > self.get_disk_size(self.rbd_name):
            self.resize_image(size)

    def _legacy_facts(self, base: str) -> dict[str, Any]:
        facts = super()._legacy_facts(base)
        if self._legacy_how:
            facts['provenance'] = dict(self._legacy_how)
        return facts

    # -- size -----------------------------------------------------------------

    def get_disk_size(self, name: str) -> int:
        """Nova's semantics: the size of this disk's RBD image, whatever
        ``name`` is (through ``driver.size``, as Nova's)."""
        try:
            return self.driver.size(self.rbd_name)
        except exception.DiskNotFound:
            raise exception.DiskNotFound(location=self.location)

    def _grow(self, size: int) -> None:
        with self._connect() as conn, self._open(conn) as img:
            img.resize(size)

    def allocated_bytes(self) -> int | None:
        """Bytes this disk itself allocates in the pool (``rbd du``'s USED,
        in whole RADOS objects; a clone's parent is not counted). None if
        it cannot be told (no such image, cluster unreachable)."""
        total = 0

        def count(offset, length, exists):
            nonlocal total
            if exists:
                total += length

        try:
            with self._connect() as conn, \
                    self._open(conn, read_only=True) as img:
                img.diff_iterate(0, img.size(), None, count,
                                 include_parent=False, whole_object=True)
        except (exception.DiskNotFound, exception.BackendUnavailable):
            return None
        return total

    # -- removal --------------------------------------------------------------

    def remove_disk(self) -> None:
        with self._connect() as conn:
            self._remove_image(conn, self.pool, self.rbd_name)

    def _remove_image(self, conn: _Connection, pool: str, name: str) -> None:
        """Remove an RBD image and its snapshots; nothing if it is gone."""
        ioctx = conn.ioctx(pool)
        target = f'{pool}/{name}'
        for attempt in range(REMOVE_RETRIES):
            try:
                try:
                    img = librbd.Image(ioctx, name)
                except librbd.ImageNotFound:
                    return
                with img:
                    for snap in list(img.list_snaps()):
                        self._remove_snap(img, target, snap['name'])
                librbd.RBD().remove(ioctx, name)
                return
            except librbd.ImageNotFound:
                return
            except (librbd.ImageBusy, librbd.ImageHasSnapshots) as e:
                # Watched by a client (a running guest, or one killed
                # before its watch expired), or a snapshot appeared.
                last = e
                time.sleep(REMOVE_RETRY_INTERVAL)
            except (rados.Error, librbd.Error) as e:
                raise RbdError(operation='removal', target=target,
                               reason=str(e))
        raise RbdError(operation='removal', target=target,
                       reason=f'still busy after {REMOVE_RETRIES} tries: '
                              f'{last}')

    @staticmethod
    def _remove_snap(img, target: str, snap: str) -> None:
        if img.is_protected_snap(snap):
            img.set_snap(snap)
            children = list(img.list_children())
            img.set_snap(None)
            if children:
                raise RbdError(
                    operation='removal', target=f'{target}@{snap}',
                    reason='the snapshot has clones: ' + ', '.join(
                        f'{p}/{c}' for p, c in children))
            img.unprotect_snap(snap)
        img.remove_snap(snap)

    # -- moves ----------------------------------------------------------------

    def send_to(self, transport, host: str, progress=None) -> None:
        """Shared storage: ``host`` sees this disk already."""

    def _prepare_empty(self, like) -> dict[str, Any]:
        """An empty RBD image shaped like ``like`` (block live migration
        into the pool; flows skip shared disks, so only direct callers)."""
        return {}

    def _make_empty(self, like) -> tuple[str, int]:
        with self._connect() as conn:
            librbd.RBD().create(conn.ioctx(self.pool), self.rbd_name,
                                like.virtual_size, old_format=False)
        return 'raw', like.virtual_size

    # -- snapshots ------------------------------------------------------------

    def snapshot_extract(self, target: str, out_format: str) -> None:
        compress = self._compress_snapshot(out_format)
        cls = type(self)
        if cls._qemu_has_rbd is not False:
            try:
                qemu.convert(self.path, 'raw', target, out_format,
                             compress=compress)
                cls._qemu_has_rbd = True
                return
            except exception.ProcessError as e:
                if "Unknown protocol 'rbd'" not in e.stderr:
                    raise
                LOG.info('qemu-img has no rbd driver here (Debian: '
                         'qemu-block-extra); exporting through librbd')
                cls._qemu_has_rbd = False
        part = target + names.PART_SUFFIX
        try:
            self.export_raw(part)
            if out_format == 'raw':
                os.replace(part, target)
            else:
                qemu.convert(part, 'raw', target, out_format,
                             compress=compress)
        finally:
            fileutils.remove_path(part)

    def import_file(self, instance, local_file: str, remote_name: str):
        """Nova's hook (config drive): ``rbd import`` a local file as
        ``<uuid>_<remote_name>``, replacing an image of that name."""
        names.check_disk_name(remote_name)
        name = f'{names.check_instance_uuid(instance.uuid)}_{remote_name}'
        with self._connect() as conn:
            self._remove_image(conn, self.pool, name)
        self._import_file(local_file, 'raw', name)
