"""Rbd disks created natively: cloned from a pool base or an image's
location, the pool base imported once when missing.

Native path, root from an image. The image lives in the pool once, as a
*pool base*: an RBD image named like the image's cache entry (the sha1 of
its id, never clashing with ``<uuid>_<disk>`` names) holding a protected
snapshot ``snap`` (Glance's convention). Each disk is a copy-on-write librbd
clone of ``<pool>/<base>@snap``, then resized if it is to be bigger:
no download, no import, **no subprocess** per disk once the base exists.
Which parent is used, in this order, is recorded in the disk's provenance
(``how``, ``why``, ``parent``):

1. ``clone-of-pool-base``: the pool base exists (made by an earlier disk,
   on this or any host using the pool).
2. ``clone-from-location``: the image source lists an
   ``rbd://<fsid>/<pool>/<image>/<snap>`` location in this cluster (fsid
   match), the image is declared raw (or iso), and the snapshot is readable:
   the disk is cloned from Glance's copy directly, nothing is fetched.
3. ``import``: otherwise the image is fetched into the local cache (which
   converts it to raw with ``force_raw_images``; if it is still not raw,
   ``qemu-img convert`` makes a raw temporary copy first) and imported once,
   under the cache's lock for the entry, with one command:
   ``rbd import --no-progress --image-format 2 --dest-pool <pool> [--id
   <user>] [--conf <conf>] <cache file> <base>.part-<random>``; the
   snapshot is created and protected, metadata (source, sha256, format) set,
   and only then is the image renamed to ``<base>``: a pool base that exists
   is always complete, a second host racing to import the same image loses
   the rename and uses the winner's. Then the disk is cloned as in 1.
   (``--dest-pool`` is today's spelling of Nova's deprecated ``--pool``.)

Native path, ephemeral and swap (``create_from_func``): the template is made
once locally in the image cache (``ensure_template``), imported once as the
pool base named by its cache name, and cloned per disk, as above.

Native path, per-instance content (``create_from_content``: a config
drive, declared ``keep_template=False``): ``func`` writes it into a
temporary file in the instance directory, which is ``rbd import``-ed (as
above) straight as the disk ``<uuid>_<disk name>`` and removed; no pool
base, no ``_base`` entry, nothing a later disk (a rescue config drive)
could reuse stale. Nova, on rbd hosts, also imports its config drive
(``import_file``); in the pool, a live migration with shared storage keeps
it.

Per disk, once the base is in the pool: 0 commands. librbd/librados calls,
in-process, on the Backend's one cluster connection (made by its first
disk, reused by every later one and by every thread:
:mod:`.ceph_connection`): open of the disk's name (must not exist; again
for the record keeping's existence check), open of the base
(read-only, at ``snap``) with its metadata, ``clone``, ``resize`` when
bigger, ``get_fsid``. The first disk of an image adds the fetch into the
local cache (0 commands for a raw image, one ``qemu-img convert`` for
another format) and one ``rbd import`` (+ snapshot create/protect, metadata,
rename through librbd); a clone from a location adds only the image
source's ``get_meta`` and an open of the location's snapshot.

Creation is all-or-nothing: the disk's record is ``creating`` until the
clone (and resize) are done; on failure the RBD image is removed with its
record, and a half-imported pool base (``<base>.part-*``) is removed too.

The record's ``backing`` stays empty: that field names a cache entry on a
host, and an Rbd disk needs none (the local copy used for an import may be
aged out by the cache manager). The parent snapshot is in the provenance.
Pool bases are not removed here when their last clone goes (Ceph refuses
while clones exist); like ``_base`` files they outlive their disks.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid as uuid_mod
from typing import Any, Callable

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import formats
from imagebackend import names
from imagebackend import processes
from imagebackend import qemu
from imagebackend import revert
from imagebackend.backends import ceph_connection
from imagebackend.backends import rbd_locations
from imagebackend.backends.ceph_connection import RbdError
from imagebackend.backends.rbd_locations import BASE_SNAP, parse_location

# The optional bindings (None where not installed), imported once.
from imagebackend.backends.ceph_connection import librbd, rados

_Connection = ceph_connection.Connection

# RBD image metadata keys on pool bases.
META_SOURCE = 'imagebackend.source'        # 'image:<id>' | 'func:<name>'
META_SHA256 = 'imagebackend.sha256'
META_FORMAT = 'imagebackend.source_format'
PART_INFIX = '.part-'


@dataclasses.dataclass
class Parent:
    """The snapshot a disk is cloned from, and why it is that one."""

    pool: str
    image: str
    snap: str
    size: int
    how: str
    why: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def spec(self) -> str:
        return f'{self.pool}/{self.image}@{self.snap}'


class RbdCreate:
    """The native creation of an Rbd disk, and the pool bases it clones
    (a part of :class:`~imagebackend.backends.rbd.Rbd`)."""

    # -- the new interface ----------------------------------------------------

    def create_from_image(self, context: Any, image_id: str,
                          size: int | None = None,
                          fallback: str | None = None) -> None:
        base = names.image_cache_name(image_id)
        with self._connect() as conn:
            self._refuse_existing(conn)
            parent = self._pool_base(conn, base, f'image:{image_id}')
            if parent is None:
                parent, why_not = self._location_parent(conn, context,
                                                        image_id)
                if parent is None:
                    parent = self._import_base(
                        conn, base, f'image:{image_id}', size, why_not,
                        lambda: self.image_cache.fetch_image(
                            context, image_id, fallback, size=size))
            self._clone_disk(conn, 'image', image_id, parent, size)

    def create_from_func(self, context: Any, func: Callable[[str], None],
                         cache_name: str, size: int | None = None,
                         fallback: str | None = None) -> None:
        names.check_cache_name(cache_name)
        with self._connect() as conn:
            self._refuse_existing(conn)
            parent = self._pool_base(conn, cache_name, f'func:{cache_name}')
            if parent is None:
                parent = self._import_base(
                    conn, cache_name, f'func:{cache_name}', size,
                    'the template is not in the pool yet',
                    lambda: self.image_cache.ensure_template(
                        cache_name, func, fallback))
            self._clone_disk(conn, 'func', cache_name, parent, size)

    def create_from_content(self, context: Any,
                            func: Callable[[str], None], cache_name: str,
                            size: int | None = None,
                            fallback: str | None = None) -> None:
        """Per-instance content (a config drive): ``func`` writes it into a
        temporary file in the instance directory, which is imported as this
        disk's own RBD image (no pool base, no ``_base`` entry: nothing
        another disk could reuse) and removed. Every host using the pool
        sees the disk, so a live migration with shared storage keeps it."""
        names.check_cache_name(cache_name)
        with self._connect() as conn:
            self._refuse_existing(conn)
            fsid = conn.fsid
        with self._creating('func', cache_name, 'native') as facts:
            # In the instance directory (made by _creating): a copy left by
            # a killed process goes with the instance, never piles up.
            tmpdir = tempfile.mkdtemp(prefix=f'.{self.disk_name}-',
                                      suffix=names.PART_SUFFIX,
                                      dir=self.instance_dir)
            try:
                local = os.path.join(tmpdir, 'content')
                func(local)
                final = os.path.getsize(local)
                self._check_size(size, final)
                # Straight in as the disk (record still `creating`): a failed
                # import's partial image goes with the record (_creating).
                self._import_file(local, 'raw', self.rbd_name)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
            if size and size > final:
                self._grow(size)
                final = size
            facts.update(format='raw', virtual_size=final, provenance={
                'how': 'import-own',
                'why': 'per-instance content: generated here and imported '
                       'as the disk itself, no template kept',
                'cluster': fsid})

    def _refuse_existing(self, conn: _Connection) -> None:
        # Before any import: creating an existing disk is an error anyway.
        if self._image_exists(conn.ioctx(self.pool), self.rbd_name):
            raise exception.DiskExists(location=self.location)

    # -- pool bases -----------------------------------------------------------

    def _pool_base(self, conn: _Connection, base: str,
                   source: str) -> Parent | None:
        """The complete pool base ``base`` (with its snapshot), or None."""
        ioctx = conn.ioctx(self.pool)
        try:
            img = librbd.Image(ioctx, base, snapshot=BASE_SNAP,
                               read_only=True)
        except librbd.ImageNotFound:
            return None
        with img:
            size = img.size()
            meta = dict(img.metadata_list())
        if meta.get(META_SOURCE, source) != source:
            raise RbdError(operation='use of pool base',
                           target=f'{self.pool}/{base}',
                           reason=f'it holds {meta[META_SOURCE]}, not '
                                  f'{source}')
        extra = {}
        if META_SHA256 in meta:
            extra['source_sha256'] = meta[META_SHA256]
        return Parent(self.pool, base, BASE_SNAP, size,
                      how='clone-of-pool-base',
                      why='the pool already holds it as '
                          f'{self.pool}/{base}@{BASE_SNAP}', extra=extra)

    def _location_parent(self, conn: _Connection, context: Any,
                         image_id: str) -> tuple[Parent | None, str]:
        """A readable rbd:// location of the image in this cluster, as the
        image source lists it, or (None, why none can be used)."""
        source = self.image_cache.source
        if source is None:
            return None, 'there is no image source to ask for locations'
        try:
            meta = source.get_meta(context, image_id)
        except exception.ImageNotFound:
            return None, 'the image source does not know the image'
        return self._cloneable_parent(
            conn, rbd_locations.image_view(meta, image_id), 'image source')

    def _cloneable_parent(self, conn: _Connection,
                          view: rbd_locations.ImageView,
                          lister: str) -> tuple[Parent | None, str]:
        """The first location of ``view`` this cluster can clone, or (None,
        why none can be used). Nova's rules (``RBDDriver.is_cloneable``):
        an ``rbd://fsid/pool/image/snap`` URL, fsid this cluster's, the
        image declared raw (or iso: raw bytes too; Nova refuses it and
        downloads it), and the image at that snapshot readable."""
        urls = view.rbd_urls
        if not urls:
            return None, f'the {lister} lists no rbd:// location'
        if view.disk_format not in formats.RAW_LIKE:
            return None, (f'the image is {view.disk_format}, not raw: its '
                          'rbd:// location cannot be cloned as a disk')
        reasons = []
        for url in urls:
            try:
                parent = self._parent_at(conn, url)
            except (exception.ImageBackendError, rados.Error,
                    librbd.Error) as e:
                reasons.append(f'{url}: {e}')
                continue
            parent.why = f'the {lister} has it in this cluster at {url}'
            return parent, ''
        return None, '; '.join(reasons)

    def _parent_at(self, conn: _Connection, url: str) -> Parent:
        fsid, pool, name, snap = parse_location(url)
        if fsid != conn.fsid:
            raise exception.ImageUnacceptable(
                image_id=url, reason=f'another cluster (this one is '
                f'{conn.fsid})')
        try:
            img = librbd.Image(conn.ioctx(pool), name, snapshot=snap,
                               read_only=True)
        except librbd.ImageNotFound:
            raise exception.ImageUnacceptable(
                image_id=url, reason='no such image or snapshot')
        with img:
            size = img.size()
        return Parent(pool, name, snap, size, how='clone-from-location',
                      why='', extra={'location': url})

    def _import_base(self, conn: _Connection, base: str, source: str,
                     size: int | None, why_not_cloned: str,
                     get_entry: Callable[[], Any]) -> Parent:
        """Import a cache entry once as the pool base ``base``."""
        entry = get_entry()   # fetched/made under the cache's own lock
        self._check_size(size, entry.virtual_size)
        with self.image_cache.lock(base):
            found = self._pool_base(conn, base, source)
            if found is not None:
                found.why = 'imported meanwhile by another disk'
                return found
            ioctx = conn.ioctx(self.pool)
            part = f'{base}{PART_INFIX}{uuid_mod.uuid4().hex[:8]}'
            with revert.Reverter() as undo:
                undo.add(lambda: self._remove_image(conn, self.pool, part))
                converted = self._import_file(entry.path, entry.format, part)
                try:
                    with librbd.Image(ioctx, part) as img:
                        img.metadata_set(META_SOURCE, source)
                        img.metadata_set(META_SHA256, entry.sha256)
                        img.metadata_set(META_FORMAT, entry.format)
                        img.create_snap(BASE_SNAP)
                        img.protect_snap(BASE_SNAP)
                        imported_size = img.size()
                    librbd.RBD().rename(ioctx, part, base)
                except librbd.ImageExists:
                    # A host using the same pool with other lock files won.
                    self._remove_image(conn, self.pool, part)
                    found = self._pool_base(conn, base, source)
                    if found is None:
                        raise RbdError(operation='import', target=base,
                                       reason='an image of that name '
                                       'exists without its snapshot')
                    found.why = 'imported meanwhile by another host'
                    return found
                except (rados.Error, librbd.Error) as e:
                    raise RbdError(operation='import', target=base,
                                   reason=str(e))
        why = why_not_cloned or 'not in the pool yet'
        if converted:
            why += f'; the cached copy is {entry.format}: converted to raw'
        extra = {'source_sha256': entry.sha256, 'imported': entry.name}
        return Parent(self.pool, base, BASE_SNAP, imported_size,
                      how='import', why=why, extra=extra)

    def _import_file(self, local: str, fmt: str, name: str) -> bool:
        """``rbd import`` a local file as RBD image ``name`` (raw bytes).

        A file that is not raw is converted to a raw temporary first, so the
        guest never sees another format's bytes. Returns whether it was.
        """
        if fmt == 'raw':
            processes.execute('rbd', 'import', '--no-progress',
                              '--image-format', '2', '--dest-pool',
                              self.pool, *self._cli_args(), local, name)
            return False
        tmp = f'{local}.raw{names.PART_SUFFIX}'
        try:
            qemu.convert(local, formats.qemu_format(fmt), tmp, 'raw')
            self._import_file(tmp, 'raw', name)
        finally:
            fileutils.remove_path(tmp)
        return True

    def _clone_disk(self, conn: _Connection, source_type: str,
                    source_id: str, parent: Parent, size: int | None) -> None:
        self._check_size(size, parent.size)
        with self._creating(source_type, source_id, 'native') as facts:
            ioctx = conn.ioctx(self.pool)
            try:
                librbd.RBD().clone(conn.ioctx(parent.pool), parent.image,
                                   parent.snap, ioctx, self.rbd_name)
                final = parent.size
                if size and size > final:
                    with librbd.Image(ioctx, self.rbd_name) as img:
                        img.resize(size)
                    final = size
            except librbd.ImageExists:
                # Made meanwhile by someone else: theirs, left alone.
                raise exception.DiskExists(location=self.location)
            except (rados.Error, librbd.Error) as e:
                raise RbdError(operation='clone', target=parent.spec,
                               reason=str(e))
            facts.update(format='raw', virtual_size=final, provenance={
                'how': parent.how, 'why': parent.why,
                'parent': parent.spec, 'cluster': conn.fsid,
                **parent.extra})
