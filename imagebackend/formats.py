"""Safety inspection of images with oslo.utils' format_inspector.

Inspection is a safety check on a *declared* format, never the source of
truth: the declared format must be what the bytes are, and the bytes must
not reference anything outside themselves.

oslo's format_inspector knows no Parallels/ploop image, so that one format
(Glance's ``ploop``, qemu's ``parallels``) is recognised here by its header
(:func:`imagebackend.parallels.parallels_header`).
"""

from __future__ import annotations

import dataclasses
import os

from oslo_utils.imageutils import format_inspector

from imagebackend import exception
from imagebackend import qcow2_check
from imagebackend.parallels import (PARALLELS_HEADER_SIZE, ParallelsHeader,
                                    parallels_header, read_parallels_bat,
                                    read_parallels_header)

# Formats whose content is a plain block device image as far as the guest
# is concerned (Nova treats iso as raw after inspection).
RAW_LIKE = {'raw', 'iso'}

# Declared (Glance) format names that qemu-img calls something else.
QEMU_NAMES = {'ploop': 'parallels'}


@dataclasses.dataclass(frozen=True)
class Inspection:
    format: str          # what the bytes are (format_inspector's name)
    virtual_size: int    # bytes the guest sees


def detect(path: str, *, image_id: str = '?',
           vmdk_allowed_types: tuple[str, ...] = ('streamOptimized',
                                                  'monolithicSparse'),
           check_safety: bool = True) -> Inspection:
    """What the bytes of ``path`` are, refusing anything unsafe.

    Any failure of the inspectors themselves on malformed bytes (oslo's
    VMDK inspector raises KeyError on some descriptors) is a refusal too,
    never an untyped crash; only the file being unreadable is an OSError.
    """
    try:
        return _detect(path, image_id, vmdk_allowed_types, check_safety)
    except (exception.ImageBackendError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - hostile bytes, any parser bug
        raise _refuse(image_id, 'inspection failed on malformed content '
                                f'({type(e).__name__}: {e})')


def _detect(path: str, image_id: str, vmdk_allowed_types: tuple[str, ...],
            check_safety: bool) -> Inspection:
    header = read_parallels_header(path)
    if header is not None:
        return _inspect_parallels(path, header, image_id, check_safety)
    try:
        detected = format_inspector.detect_file_format(path)
    except format_inspector.ImageFormatError as e:
        raise _refuse(image_id, f'format could not be determined safely: {e}')
    if detected is None:
        raise _refuse(image_id, 'format could not be determined')
    name = str(detected)
    # An encrypted image cannot be opened without its key, which nothing
    # here has: refused whatever the safety settings.
    if name == 'luks':
        raise _refuse(image_id, 'encrypted (LUKS) images are not supported')
    if name == 'qcow2':
        crypt = _qcow2(qcow2_check.encryption, path, image_id)
        if crypt:
            raise _refuse(image_id, f'encrypted qcow2 ({crypt}) images are '
                                    'not supported')
    if check_safety:
        _safety_check(detected, path, image_id)
        if name == 'vmdk':
            allowed = {t.lower() for t in vmdk_allowed_types}
            vmdktype = getattr(detected, 'vmdktype', None)
            if vmdktype not in allowed:
                raise _refuse(image_id,
                              f'VMDK create type {vmdktype!r} is not allowed')
        if name == 'qcow2':
            _check_qcow2_tables(path, image_id)
    if name in RAW_LIKE or name == 'gpt':
        size = os.path.getsize(path)
    else:
        size = detected.virtual_size
    if not size or size < 0:
        raise _refuse(image_id, 'virtual size could not be determined')
    return Inspection(format=name, virtual_size=int(size))


def _safety_check(detected, path: str, image_id: str) -> None:
    """format_inspector's safety checks, except that a qcow2 whose only
    "unknown" incompatible feature is one imagebackend knows (extended_l2,
    which oslo does not know yet) passes."""
    try:
        detected.safety_check()
    except format_inspector.SafetyCheckFailed as e:
        failures = dict(e.failures)
        if str(detected) == 'qcow2' and 'unknown_features' in failures:
            unknown = _qcow2(qcow2_check.unknown_incompatible_features,
                             path, image_id)
            if not unknown:
                del failures['unknown_features']
        if failures:
            raise _refuse(image_id, 'safety check failed: '
                                    f'{", ".join(sorted(failures))}')


def inspect(path: str, declared: str, *, image_id: str = '?',
            vmdk_allowed_types: tuple[str, ...] = ('streamOptimized',
                                                   'monolithicSparse'),
            check_safety: bool = True) -> Inspection:
    """Inspect ``path`` and check it is safely what ``declared`` says.

    Raises ImageUnacceptable for a mismatch or a failed safety check
    (backing file, qcow2 data-file, VMDK extents or a disallowed create
    type, truncated headers...).
    """
    found = detect(path, image_id=image_id,
                   vmdk_allowed_types=vmdk_allowed_types,
                   check_safety=check_safety)
    name = found.format
    # A raw image holding a partitioned disk (or a bootable ISO, which
    # also carries a partition table) is still what was declared.
    if name == 'gpt' and declared in RAW_LIKE:
        name = declared
    if name != declared:
        raise _refuse(image_id, f'declared format {declared!r} but the '
                                f'content is {name!r}')
    return dataclasses.replace(found, format=name)


def cache_format(name: str) -> str:
    """The format a cache entry of inspected format ``name`` is used as
    (qemu-img's name for it)."""
    return 'raw' if name in RAW_LIKE or name == 'gpt' else qemu_format(name)


def qemu_format(declared: str) -> str:
    """qemu-img's name for a declared format (``ploop`` -> ``parallels``)."""
    return QEMU_NAMES.get(declared, declared)


# -- the declared virtual size, from the first bytes of a stream ---------------

# How far into a stream the header of a declared format is looked for; a
# format that reveals its size later is checked after the download.
PROBE_LIMIT = 64 * 1024 * 1024


class SizeProbe:
    """A lower bound on an image's virtual size while its bytes arrive.

    For a raw-like format the virtual size is the byte length, so the bound
    is the bytes seen so far. For others it is the size the declared
    format's header states, as soon as the header has arrived (the first
    chunk, for qcow2 or parallels). The bound lets a download stop early:
    an image over the size asked for or over the ceiling is refused before
    the rest of it is fetched. Only a claim: the downloaded file is still
    inspected in full, and a malformed header just ends the probing.
    """

    def __init__(self, declared: str):
        self.raw = declared in RAW_LIKE or declared in ('ami', 'aki', 'ari')
        self.seen = 0
        self.header_size: int | None = None
        self._head = b''
        self._inspector = None
        self._done = self.raw
        if declared == 'ploop':
            self._parallels = True
        else:
            self._parallels = False
            cls = format_inspector.get_inspector(declared)
            # An inspector without its own virtual_size (qed) reports the
            # bytes it has read: no claim about the disk's size at all.
            if self.raw or cls is None or cls.virtual_size is \
                    format_inspector.FileInspector.virtual_size:
                self._done = True
            else:
                self._inspector = cls()

    def feed(self, chunk: bytes) -> int:
        """Account for the next chunk; return the current lower bound."""
        self.seen += len(chunk)
        if not self._done:
            try:
                self._probe(chunk)
            except Exception:  # noqa: BLE001 - malformed: inspected later
                self._done = True
            if self.seen >= PROBE_LIMIT:
                self._done = True
        return self.minimum

    def _probe(self, chunk: bytes) -> None:
        if self._parallels:
            self._head += chunk[:PARALLELS_HEADER_SIZE - len(self._head)]
            if len(self._head) >= PARALLELS_HEADER_SIZE:
                header = parallels_header(self._head)
                if header is not None:
                    self.header_size = header.virtual_size
                self._done = True
            return
        self._inspector.eat_chunk(chunk)
        if self._inspector.format_match:
            size = self._inspector.virtual_size
            if size and size > 0:
                self.header_size = int(size)
                self._done = True

    @property
    def minimum(self) -> int:
        if self.raw:
            return self.seen
        return self.header_size or 0


# -- Parallels / ploop ----------------------------------------------------------

def _inspect_parallels(path: str, header: ParallelsHeader, image_id: str,
                       check_safety: bool) -> Inspection:
    """Refuse a parallels image whose header does not describe it.

    Checked: a version-2 header, a non-zero size and cluster size, a BAT
    covering the whole disk and ending before the data; with
    ``check_safety``, every allocated cluster inside the file (a
    truncated download would otherwise read as zeros, as for qcow2).
    """
    def bad(reason):
        return _refuse(image_id, f'parallels image: {reason}')

    if header.version != 2:
        raise bad(f'unknown header version {header.version}')
    if not header.nb_sectors or not header.cluster_sectors:
        raise bad('zero virtual size or cluster size')
    if header.bat_entries * header.cluster_sectors < header.nb_sectors:
        raise bad('the BAT does not cover the virtual size')
    if PARALLELS_HEADER_SIZE + 4 * header.bat_entries > header.data_offset:
        raise bad('the BAT overlaps the data')
    if check_safety:
        end = os.path.getsize(path)
        try:
            bat = read_parallels_bat(path, header)
        except ValueError as e:
            raise bad(str(e))
        for index, entry in enumerate(bat):
            if entry and header.cluster_offset(entry) + \
                    header.cluster_size > end:
                raise bad(f'cluster {index} lies past the end of the file '
                          f'({end} bytes): truncated or corrupt')
    return Inspection(format='ploop', virtual_size=header.virtual_size)


def _check_qcow2_tables(path: str, image_id: str) -> None:
    """Refuse a qcow2 any of whose tables or data clusters lies past its
    end (a truncated download: qemu would read what is missing as zeros).
    See :mod:`imagebackend.qcow2_check`."""
    _qcow2(qcow2_check.check, path, image_id)


def _qcow2(func, path: str, image_id: str):
    try:
        return func(path)
    except qcow2_check.Qcow2Problem as e:
        raise _refuse(image_id, f'qcow2: {e}: truncated or corrupt')


def _refuse(image_id: str, reason: str) -> exception.ImageUnacceptable:
    return exception.ImageUnacceptable(image_id=image_id, reason=reason)
