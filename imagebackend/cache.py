"""The image cache: ``<instances_path>/_base``, fetched once, inspected once.

Entries are named as Nova names them (sha1 of the image id for images; the
caller's cache name for templates). Each entry ``X`` has a sidecar
``X.meta.json`` (format, virtual size, digest, provenance) written before
the data is renamed into place, so a present entry always has its sidecar
and nothing has to re-inspect it later.

Nothing in ``_base`` is trusted because it is there. The sidecar's
``sha256`` field holds the data's digest (the block-list digest of
:func:`fileutils.file_digest`, labelled; older sidecars hold a plain sha256
and still verify) and ``data_stat`` the data file's size, mtime and inode
when its digest was last checked. Before an entry is used for a new disk,
a changed ``data_stat`` means a full re-hash, and data that no longer
matches its digest is refused (:class:`exception.CorruptCacheEntry`), as is
an unreadable or malformed sidecar: neither is ever rebuilt from the
current bytes. Hashing a large base on every spawn would cost what the
cache saves, hence the stat fingerprint; the cache marks an entry used by
its access time (``touch``), so its mtime moves only when its bytes do.

Creation runs under an oslo.concurrency external lock named after the entry
(``nova-<name>`` in ``<instances_path>/locks``, Nova's lock, so hosts sharing
instances_path over NFS serialise with each other), and re-checks for the
entry inside the lock: many spawns asking at once fetch once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import os
import time
from typing import Any, Callable

from oslo_concurrency import lockutils
from oslo_utils import units

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import formats
from imagebackend import locks
from imagebackend import names
from imagebackend import qemu
from imagebackend import sources as sources_mod
from imagebackend import transport as transport_mod

LOG = logging.getLogger(__name__)

LOCK_PREFIX = 'nova-'


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """A file in the image cache, as its sidecar describes it."""

    name: str
    path: str
    format: str
    virtual_size: int
    sha256: str
    kind: str               # 'image' or 'template'
    source: str             # image id, or the template's cache name
    provenance: str = 'fetched'   # fetched | generated | side-loaded | adopted
    created_at: float = dataclasses.field(default_factory=time.time)
    # The data file's {size, mtime_ns, ino} when its digest was last
    # checked (None: never, an older sidecar).
    data_stat: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d['path']  # the path is where the sidecar sits
        return d


def data_stat(st: os.stat_result) -> dict[str, int]:
    """What must not change for data to keep a verified digest."""
    return {'size': st.st_size, 'mtime_ns': st.st_mtime_ns,
            'ino': st.st_ino}


def last_used(st: os.stat_result) -> float:
    """When an entry was last used: :meth:`ImageCache.touch` sets its access
    time (not its mtime, which stays the data's)."""
    return max(st.st_atime, st.st_mtime)


_STR_FIELDS = ('name', 'format', 'kind', 'source', 'provenance')


def _entry_from_sidecar(name: str, path: str, data: Any) -> CacheEntry:
    """A CacheEntry from a parsed sidecar; ValueError if it is malformed."""
    if not isinstance(data, dict):
        raise ValueError('not a JSON object')
    missing = {'name', 'format', 'virtual_size', 'sha256', 'kind',
               'source'} - set(data)
    if missing:
        raise ValueError(f'missing fields {sorted(missing)}')
    for key in _STR_FIELDS:
        if key in data and not isinstance(data[key], str):
            raise ValueError(f'{key} is not a string')
    if data['name'] != name:
        raise ValueError(f'it describes entry {data["name"]!r}')
    size = data['virtual_size']
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f'virtual_size {size!r} is not a positive integer')
    fileutils.digest_algorithm(data['sha256'])  # ValueError if unknown
    created = data.get('created_at', 0.0)
    if isinstance(created, bool) or not isinstance(created, numbers.Real):
        raise ValueError('created_at is not a number')
    stat = data.get('data_stat')
    if stat is not None and not (
            isinstance(stat, dict) and set(stat) == {'size', 'mtime_ns', 'ino'}
            and all(isinstance(v, int) and not isinstance(v, bool)
                    for v in stat.values())):
        raise ValueError('data_stat is malformed')
    known = {f.name for f in dataclasses.fields(CacheEntry)} - {'path'}
    return CacheEntry(path=path, **{k: v for k, v in data.items()
                                    if k in known})


def declared_format(disk_format: str) -> str:
    """The format an image's bytes must be, from its declared disk_format
    (Amazon-style images are raw kernels and disks)."""
    return 'raw' if disk_format in ('ami', 'aki', 'ari') else disk_format


class ImageCache:
    """Fetch images and templates into ``_base`` exactly once."""

    def __init__(self, conf, source: sources_mod.ImageSource | None,
                 transport: transport_mod.Transport | None = None):
        self.conf = conf
        self.source = source
        self.transport = transport
        self.instances_path = conf.instances_path
        self.subdir = conf.image_cache.subdirectory_name
        self.base_dir = os.path.join(self.instances_path, self.subdir)
        self.lock_path = locks.lock_dir(self.instances_path)

    # -- names and locks ---------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.base_dir, names.check_cache_name(name))

    def lock(self, name: str):
        """The external lock guarding the creation of entry ``name``."""
        return lockutils.lock(name, lock_file_prefix=LOCK_PREFIX,
                              external=True, lock_path=self.lock_path)

    def ensure_dirs(self) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        os.makedirs(self.lock_path, exist_ok=True)

    # -- reading -----------------------------------------------------------

    def get(self, name: str) -> CacheEntry | None:
        """The entry if it is complete (data and sidecar), else None.

        None also for data without a sidecar (a Nova-era base: see
        :meth:`check`). A sidecar that cannot be read or parsed, or whose
        fields are missing or of the wrong type, raises CorruptCacheEntry.
        """
        path = self.path(name)
        sidecar = path + names.META_SUFFIX
        try:
            with open(sidecar) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:  # UnicodeDecodeError too
            raise self._corrupt(name, f'unreadable sidecar {sidecar}: {e}')
        if not os.path.exists(path):
            return None
        try:
            return _entry_from_sidecar(name, path, data)
        except ValueError as e:
            raise self._corrupt(name, f'malformed sidecar {sidecar}: {e}')

    def _corrupt(self, name: str, reason: str) -> exception.CorruptCacheEntry:
        return exception.CorruptCacheEntry(name=name, path=self.path(name),
                                           reason=reason)

    # How often data seen without its sidecar is looked at again before it
    # is called corrupt (each look needs a publish or removal to race it).
    _OBSERVATIONS = 3

    def _observe(self, name: str) -> CacheEntry | None:
        """:meth:`get`, but data without a sidecar raises CorruptCacheEntry.

        Unlocked, and another thread or process may publish or remove the
        entry meanwhile: a publish writes the sidecar before renaming the
        data in, a removal deletes the data before the sidecar, so data
        that was there *before* the sidecar was found missing has no
        sidecar only if a removal ran in between (the data is gone again
        then) or the entry really lacks one. Looking at the data first
        and the sidecar second (never the other way round: a publish may
        land between the two) tells these apart.
        """
        path = self.path(name)
        for _ in range(self._OBSERVATIONS):
            present = os.path.exists(path)
            entry = self.get(name)
            if entry is not None or not present:
                return entry
        raise self._corrupt(
            name, 'its data has no sidecar, so nothing says what its bytes '
                  'should be; remove the entry to fetch or make it again, '
                  'or adopt it explicitly (ImageCache.adopt)')

    def check(self, name: str) -> CacheEntry | None:
        """The entry ``name`` if its data still has its digest; None if
        there is no entry. Raise CorruptCacheEntry for data without a
        sidecar, a broken sidecar, or data that changed.

        The full digest is recomputed only when the data file's size, mtime
        or inode differ from ``data_stat`` (or it was never recorded); a
        match records the new ``data_stat``.
        """
        path = self.path(name)
        entry = self._observe(name)
        if entry is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if entry.data_stat == data_stat(st):
            return entry
        try:
            matches = fileutils.digest_matches(path, entry.sha256)
        except FileNotFoundError:
            return None  # removed meanwhile (cache clean): no entry
        if not matches:
            raise self._corrupt(
                name, 'its data no longer matches the digest in its sidecar '
                      '(changed since it was cached); remove the entry to '
                      'fetch or make it again')
        entry = dataclasses.replace(entry, data_stat=data_stat(st))
        fileutils.atomic_write_json(path + names.META_SUFFIX, entry.to_dict())
        return entry

    def entries(self) -> list[CacheEntry]:
        """Every complete entry; broken ones are left out (with a warning):
        see :func:`cache_manager.verify` for what is wrong with them."""
        try:
            listing = sorted(os.listdir(self.base_dir))
        except FileNotFoundError:
            return []
        found = []
        for n in listing:
            # ``X.part.meta.json`` is a killed side-load's, not a sidecar.
            if n.endswith(names.META_SUFFIX) and not n.endswith(
                    names.PART_SUFFIX + names.META_SUFFIX):
                try:
                    entry = self.get(n[:-len(names.META_SUFFIX)])
                except exception.CorruptCacheEntry as e:
                    LOG.warning('%s', e)
                    continue
                if entry:
                    found.append(entry)
        return found

    def touch(self, entry: CacheEntry) -> None:
        """Mark an entry used now: its access time (the cache manager ages
        by :func:`last_used`); the mtime is left to the data's changes."""
        try:
            st = os.stat(entry.path)
            os.utime(entry.path, ns=(time.time_ns(), st.st_mtime_ns))
        except OSError:  # read-only or foreign-owned NFS entry: not fatal
            pass

    # -- Nova's create_image ------------------------------------------------

    def deep_inspection(self, safe: bool = False) -> bool:
        """Whether Nova's ``create_image`` re-checks a base's safety: not
        when the caller made it (``safe``) or the operator turned it off
        (``[workarounds] disable_deep_image_inspection``)."""
        return not (safe or
                    self.conf.workarounds.disable_deep_image_inspection)

    def legacy_base(self, path: str, safe: bool = False
                    ) -> tuple[str, int | None]:
        """(format, virtual size) of the base at ``path`` a caller of
        Nova's ``create_image`` handed over: as its sidecar says (the entry
        is touched: in use), else from its bytes, inspected with the safety
        check :meth:`deep_inspection` asks for; never a qemu-img probe."""
        entry = self.get(os.path.basename(path))
        if entry is not None:
            self.touch(entry)
            return entry.format, entry.virtual_size
        # Not made by this library (no sidecar): inspect, never guess.
        found = formats.detect(path, check_safety=self.deep_inspection(safe))
        return formats.cache_format(found.format), found.virtual_size

    # -- images --------------------------------------------------------------

    def fetch_image(self, context: Any, image_id: str,
                    fallback: str | None = None,
                    size: int | None = None) -> CacheEntry:
        """The cache entry for ``image_id``, fetched if it is not cached.

        ``size``, the size of the disk the image is for, lets a fetch
        refuse an image larger than it (DiskTooSmall) before its data is
        downloaded; an entry already cached is the caller's to compare."""
        name = names.image_cache_name(image_id)
        entry = self.check(name)
        if entry is None:
            self.ensure_dirs()
            with self.lock(name):
                entry = self.check(name)
                if entry is None:
                    entry = self.fetch_into(context, image_id, self.path(name),
                                            fallback=fallback, size=size)
        self.touch(entry)
        return entry

    def fetch_into(self, context: Any, image_id: str, target: str,
                   fallback: str | None = None,
                   size: int | None = None) -> CacheEntry:
        """Fetch, check and (maybe) convert an image to ``target``.

        The caller holds the entry's lock. Bytes land in ``target.part`` and
        are renamed to ``target`` only after every check passed; nothing is
        left behind on failure. A sidecar is written when ``target`` is in
        the cache directory.

        The image's virtual size is compared with ``size`` (the disk it is
        for; DiskTooSmall) and with ``[imagebackend]
        max_image_virtual_size_gb`` (ImageTooLarge) before any data is
        fetched when the source declares it, else as soon as the stream's
        first bytes (the header) reveal it: the download stops there.
        """
        name = names.image_cache_name(image_id)
        if self.source is None:
            raise exception.ImageNotFound(image_id=image_id)
        try:
            meta = self.source.get_meta(context, image_id)
        except exception.ImageNotFound:
            if fallback and self.transport:
                return self.side_load(fallback, name, 'image', image_id,
                                       target)
            raise
        probe = formats.SizeProbe(declared_format(meta.disk_format))
        for declared_size in (meta.virtual_size,
                              meta.size if probe.raw else None):
            if declared_size:
                self._check_virtual_size(image_id, declared_size, size)
        part = target + names.PART_SUFFIX
        converted = target + '.converted' + names.PART_SUFFIX
        stream = None
        try:
            with open(part, 'wb') as f:
                writer = fileutils.SparseWriter(f)
                stream = self.source.open(context, image_id)
                for chunk in stream:
                    self._check_virtual_size(image_id, probe.feed(chunk),
                                             size)
                    writer.write(chunk)
                writer.close()
            fmt, vsize = self._check(part, meta, image_id)
            # Over the ceiling is refused whenever it shows. Smaller than
            # the disk asked for, known only now that the data is here: the
            # entry is kept (as Nova keeps it) and the caller refuses.
            self._check_virtual_size(image_id, vsize, None)
            digest = writer.digest()
            if fmt != 'raw' and self.conf.force_raw_images:
                qemu.convert(part, fmt, converted, 'raw')
                fileutils.fsync_file(converted)
                os.replace(converted, part)
                fmt = 'raw'
                digest = fileutils.file_digest(part)
            entry = CacheEntry(name=name, path=target, format=fmt,
                               virtual_size=vsize, sha256=digest,
                               kind='image', source=image_id)
            return self._publish(part, entry)
        finally:
            close = getattr(stream, 'close', None)
            if close is not None:
                close()  # stop a source stream left half-read
            fileutils.remove_path(part)
            fileutils.remove_path(converted)

    def _check_virtual_size(self, image_id: str, virtual_size: int,
                            size: int | None) -> None:
        """Refuse an image of (at least) ``virtual_size`` bytes for a disk
        of ``size`` bytes, or over the configured ceiling."""
        if size and size < virtual_size:
            raise exception.DiskTooSmall(size=size, image_size=virtual_size)
        limit = self.conf.imagebackend.max_image_virtual_size_gb * units.Gi
        if limit and virtual_size > limit:
            raise exception.ImageTooLarge(
                image_id=image_id, virtual_size=virtual_size, limit=limit,
                reason=f'virtual size {virtual_size} bytes over the limit '
                       f'of {limit} bytes')

    def _check(self, path: str, meta: sources_mod.ImageMeta,
               image_id: str) -> tuple[str, int]:
        """Return (format, virtual size) of a downloaded image, or refuse."""
        declared = declared_format(meta.disk_format)
        if self.conf.workarounds.disable_deep_image_inspection:
            declared = formats.qemu_format(declared)  # ploop -> parallels
            info = qemu.info(path, declared, **self._limits())
            return declared, int(info['virtual-size'])
        found = formats.inspect(
            path, declared, image_id=image_id,
            vmdk_allowed_types=tuple(self.conf.compute.vmdk_allowed_types))
        return formats.cache_format(found.format), found.virtual_size

    def _limits(self) -> dict[str, int]:
        return {
            'address_space_gb': self.conf.imagebackend.
            qemu_img_address_space_limit,
            'cpu_seconds': self.conf.imagebackend.qemu_img_cpu_time_limit,
        }

    # -- templates ---------------------------------------------------------

    def ensure_template(self, cache_name: str, func: Callable[[str], None],
                        fallback: str | None = None) -> CacheEntry:
        """The template ``cache_name``, made by ``func(target)`` if missing.

        With ``fallback`` the template is first copied from that host: a
        regenerated filesystem is not byte-identical to the one disks there
        were made from.
        """
        names.check_cache_name(cache_name)
        entry = self.check(cache_name)
        if entry is None:
            self.ensure_dirs()
            with self.lock(cache_name):
                entry = self.check(cache_name)
                if entry is None and fallback and self.transport:
                    try:
                        entry = self.side_load(fallback, cache_name,
                                                'template', cache_name,
                                                self.path(cache_name))
                    except exception.TransportError as e:
                        LOG.info('regenerating template %s: %s',
                                 cache_name, e)
                if entry is None:
                    entry = self.write_template(cache_name, func,
                                                self.path(cache_name))
        self.touch(entry)
        return entry

    def write_template(self, cache_name: str, func: Callable[[str], None],
                       target: str) -> CacheEntry:
        """Run ``func`` into ``target.part`` and publish it (lock held)."""
        part = target + names.PART_SUFFIX
        fileutils.remove_path(part)
        try:
            func(part)
            fileutils.fsync_file(part)
            # Templates are raw files the library's own functions wrote.
            entry = CacheEntry(name=cache_name, path=target, format='raw',
                               virtual_size=os.path.getsize(part),
                               sha256=fileutils.file_digest(part),
                               kind='template', source=cache_name,
                               provenance='generated')
            return self._publish(part, entry)
        finally:
            fileutils.remove_path(part)

    # -- legacy resized bases ------------------------------------------------

    def ensure_resized(self, entry: CacheEntry, name: str, size: int,
                       expected_sha256: str | None = None
                       ) -> CacheEntry | None:
        """The entry ``name``: ``entry``'s data grown to ``size`` bytes,
        made if it is missing.

        Nova before Juno put a qcow2 disk on a copy of its base grown to
        the flavor's size, ``_base/<base>_<N GiB>``; such a disk still names
        it, and on a host without it the copy is made again (Nova's
        ``legacy_backing_size``). Copied (reflink or sparse) and grown in a
        ``.part`` file, then published with its sidecar: whole or absent.
        Its filesystem is not grown: old Nova grew it with ``use_cow``,
        which left the filesystem alone.

        Data already there is left as it is (None if it has no sidecar: the
        disks on it have read it all along). A size over ``[imagebackend]
        max_image_virtual_size_gb`` is refused (ImageTooLarge), as a smaller
        one than ``entry``'s (ImageUnacceptable). ``expected_sha256``, when a
        disk's record says what the copy held, refuses a copy that differs
        (ImageUnacceptable), before anything is published.
        """
        names.check_cache_name(name)
        self._check_virtual_size(entry.source, size, None)
        if size < entry.virtual_size:
            raise exception.ImageUnacceptable(
                image_id=entry.source, reason=(
                    f'{name} would be a copy of {entry.name} grown to {size} '
                    f'bytes, but {entry.name} is {entry.virtual_size} bytes'))
        target = self.path(name)
        self.ensure_dirs()
        with self.lock(name):
            if os.path.exists(target):
                return self.get(name)
            part = target + names.PART_SUFFIX
            fileutils.remove_path(part)
            try:
                fileutils.clone_or_sparse_copy(entry.path, part)
                qemu.resize(part, entry.format, size)
                fileutils.fsync_file(part)
                made = CacheEntry(name=name, path=target, format=entry.format,
                                  virtual_size=size,
                                  sha256=fileutils.file_digest(part),
                                  kind=entry.kind, source=entry.source,
                                  provenance='generated')
                if expected_sha256 is not None and \
                        made.sha256 != expected_sha256:
                    raise exception.ImageUnacceptable(
                        image_id=entry.source, reason=(
                            f'{name} made again from {entry.name} has '
                            f'digest {made.sha256}, not the {expected_sha256}'
                            ' the disk on it was made on'))
                return self._publish(part, made)
            finally:
                fileutils.remove_path(part)

    # -- shared steps ------------------------------------------------------

    def _publish(self, part: str, entry: CacheEntry) -> CacheEntry:
        """Sidecar first, then the data: a present entry has its sidecar.
        The data's stat is recorded with the digest just computed from it
        (a rename keeps the inode and mtime)."""
        if os.path.dirname(entry.path) == self.base_dir:
            entry = dataclasses.replace(entry,
                                        data_stat=data_stat(os.stat(part)))
            fileutils.atomic_write_json(entry.path + names.META_SUFFIX,
                                        entry.to_dict())
        os.rename(part, entry.path)
        fileutils.fsync_dir(os.path.dirname(entry.path))
        return entry

    def side_load(self, host: str, name: str, kind: str, source: str,
                   target: str) -> CacheEntry:
        """Copy entry ``name`` (data and sidecar) from ``host``; verify it."""
        rel = os.path.join(self.subdir, name)
        part = target + names.PART_SUFFIX
        meta_part = part + names.META_SUFFIX
        try:
            self.transport.fetch(host, rel + names.META_SUFFIX, meta_part)
            with open(meta_part) as f:
                remote = json.load(f)
            self.transport.fetch(host, rel, part)
            # The remote's digest, by its algorithm (an older host's plain
            # sha256 too), is kept: records elsewhere quote it.
            digest = remote.get('sha256')
            if not fileutils.digest_matches(part, digest):
                raise exception.TransportError(
                    what=rel, host=host,
                    reason='digest of the copy does not match its record')
            entry = CacheEntry(name=name, path=target,
                               format=remote['format'],
                               virtual_size=int(remote['virtual_size']),
                               sha256=digest, kind=kind, source=source,
                               provenance='side-loaded')
            return self._publish(part, entry)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise exception.TransportError(what=rel, host=host,
                                           reason=f'bad cache entry: {e}')
        finally:
            fileutils.remove_path(part)
            fileutils.remove_path(meta_part)

    def adopt(self, name: str, kind: str, source: str) -> CacheEntry:
        """Give data without a sidecar (a base Nova made before sidecars)
        one describing its current bytes: inspected (safety-checked) and
        digested now. Never done implicitly: trusting bytes nothing
        vouches for is an operator's decision (:meth:`check` refuses them).
        """
        path = self.path(name)
        with self.lock(name):
            if os.path.exists(path + names.META_SUFFIX):
                raise self._corrupt(name, 'it already has a sidecar')
            found = formats.detect(path, image_id=source)
            entry = CacheEntry(name=name, path=path,
                               format=formats.cache_format(found.format),
                               virtual_size=found.virtual_size,
                               sha256=fileutils.file_digest(path), kind=kind,
                               source=source, provenance='adopted',
                               data_stat=data_stat(os.stat(path)))
            fileutils.atomic_write_json(path + names.META_SUFFIX,
                                        entry.to_dict())
        return entry

    def remove(self, name: str) -> None:
        """Delete an entry (data first, so no half entry is ever 'present')."""
        with self.lock(name):
            fileutils.remove_path(self.path(name))
            fileutils.remove_path(self.path(name) + names.META_SUFFIX)
