"""Safety inspection of images with oslo.utils' format_inspector.

Inspection is a safety check on a *declared* format, never the source of
truth: the declared format must be what the bytes are, and the bytes must
not reference anything outside themselves.
"""

from __future__ import annotations

import dataclasses
import os
import struct

from oslo_utils.imageutils import format_inspector

from imagebackend import exception

# Formats whose content is a plain block device image as far as the guest
# is concerned (Nova treats iso as raw after inspection).
RAW_LIKE = {'raw', 'iso'}


@dataclasses.dataclass(frozen=True)
class Inspection:
    format: str          # what the bytes are (format_inspector's name)
    virtual_size: int    # bytes the guest sees


def detect(path: str, *, image_id: str = '?',
           vmdk_allowed_types: tuple[str, ...] = ('streamOptimized',
                                                  'monolithicSparse'),
           check_safety: bool = True) -> Inspection:
    """What the bytes of ``path`` are, refusing anything unsafe."""
    try:
        detected = format_inspector.detect_file_format(path)
    except format_inspector.ImageFormatError as e:
        raise _refuse(image_id, f'format could not be determined safely: {e}')
    if detected is None:
        raise _refuse(image_id, 'format could not be determined')
    name = str(detected)
    if check_safety:
        try:
            detected.safety_check()
        except format_inspector.SafetyCheckFailed as e:
            raise _refuse(image_id, f'safety check failed: {e}')
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
    if not size:
        raise _refuse(image_id, 'virtual size could not be determined')
    return Inspection(format=name, virtual_size=int(size))


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
    """The format a cache entry of inspected format ``name`` is used as."""
    return 'raw' if name in RAW_LIKE or name == 'gpt' else name


def _check_qcow2_tables(path: str, image_id: str) -> None:
    """Refuse a qcow2 whose L1 or refcount table lies past its end.

    format_inspector reads only the header, so a truncated download with a
    whole header passes, and qemu reads the missing tables as zeros: the
    image becomes an all-zero disk without a word. Header fields (big
    endian): cluster_bits @20, l1_size @36, l1_table_offset @40,
    refcount_table_offset @48.
    """
    with open(path, 'rb') as f:
        header = f.read(60)
        end = os.fstat(f.fileno()).st_size
    (cluster_bits,) = struct.unpack_from('>I', header, 20)
    l1_size, l1_offset, rc_offset = struct.unpack_from('>IQQ', header, 36)
    if not 9 <= cluster_bits <= 21:
        raise _refuse(image_id, f'qcow2 cluster_bits {cluster_bits} invalid')
    # The refcount table always has a first entry; the L1 table is written
    # whole (l1_size 8-byte entries).
    for what, offset, length in (('refcount table', rc_offset, 8),
                                 ('L1 table', l1_offset, 8 * l1_size)):
        if length and offset + length > end:
            raise _refuse(image_id, f'qcow2 {what} at offset {offset} lies '
                                    f'past the end of the file ({end} '
                                    'bytes): truncated or corrupt')


def _refuse(image_id: str, reason: str) -> exception.ImageUnacceptable:
    return exception.ImageUnacceptable(image_id=image_id, reason=reason)
