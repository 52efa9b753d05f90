"""Structural checks of a qcow2 file that format_inspector does not make.

format_inspector reads the header only. qemu reads whatever a table or a
data cluster past the file's end would hold as zeros, so a download cut
short anywhere after the header becomes a disk that silently reads zeros
where the image had data. This walks the active L1 table and every L2
table it names (chunk by chunk: memory stays bounded whatever the image
declares) and refuses any table or data cluster not inside the file.

Layout (QEMU docs/interop/qcow2.txt), big endian:

* header: version @4, cluster_bits @20, size @24, crypt_method @32,
  l1_size @36, l1_table_offset @40, refcount_table_offset @48,
  incompatible_features @72 (v3).
* L1 entry: bits 9-55 the offset of an L2 table (0: none).
* L2 entry (8 bytes; 16 with ``extended_l2``, incompatible bit 4, whose
  second word is a subcluster bitmap, bits 0-31 "subcluster i
  allocated"; a cluster's data then ends after its last allocated
  subcluster): bit 62 set = compressed cluster.
  Standard: bit 0 "reads as zeros" (not with extended L2), bits 9-55 the
  cluster's offset (0: unallocated). Compressed, with
  ``x = 62 - (cluster_bits - 8)``: bits 0..x-1 the byte offset of the
  data, bits x..61 the number of 512-byte sectors used beyond the one
  holding that offset (the last may be cut at the end of the file).
"""

from __future__ import annotations

import array
import dataclasses
import os
import struct
import sys

HEADER = struct.Struct('>4sIQIIQIIQQ')   # through refcount_table_offset
OFFSET_MASK = 0x00fffffffffffe00         # bits 9-55
COMPRESSED = 1 << 62
ZERO_FLAG = 1
INCOMPAT_EXTENDED_L2 = 1 << 4
# What imagebackend knows and accepts: dirty (0), corrupt (1), external
# data file (2, refused by format_inspector's data_file check), compression
# type (3), extended L2 (4).
KNOWN_INCOMPAT = 0x1f
L1_CHUNK = 64 * 1024                     # entries read at a time
CRYPT_METHODS = {1: 'AES', 2: 'LUKS'}


class Qcow2Problem(ValueError):
    """The file is not a qcow2 qemu would read whole."""


@dataclasses.dataclass(frozen=True)
class Qcow2Header:
    version: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_offset: int
    refcount_offset: int
    incompatible: int

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible & INCOMPAT_EXTENDED_L2)


def read_header(f) -> Qcow2Header:
    f.seek(0)
    data = f.read(80)
    if len(data) < HEADER.size or data[:4] != b'QFI\xfb':
        raise Qcow2Problem('not a qcow2 header')
    (_magic, version, _bf_off, _bf_size, cluster_bits, size, crypt, l1_size,
     l1_offset, rc_offset) = HEADER.unpack_from(data)
    incompatible = 0
    if version >= 3:
        if len(data) < 80:
            raise Qcow2Problem('truncated version 3 header')
        (incompatible,) = struct.unpack_from('>Q', data, 72)
    return Qcow2Header(version, cluster_bits, size, crypt, l1_size,
                       l1_offset, rc_offset, incompatible)


def unknown_incompatible_features(path: str) -> int:
    """Incompatible feature bits imagebackend does not know (0: none)."""
    with open(path, 'rb') as f:
        return read_header(f).incompatible & ~KNOWN_INCOMPAT


def encryption(path: str) -> str | None:
    """AES, LUKS or "method N" for an encrypted qcow2, else None."""
    with open(path, 'rb') as f:
        crypt = read_header(f).crypt_method
    if not crypt:
        return None
    return CRYPT_METHODS.get(crypt, f'method {crypt}')


def _entries(data: bytes) -> array.array:
    table = array.array('Q')
    table.frombytes(data)
    if sys.byteorder != 'big':
        table.byteswap()
    return table


def check(path: str) -> None:
    """Raise :class:`Qcow2Problem` unless every table and data cluster the
    active L1 table reaches lies inside the file."""
    with open(path, 'rb') as f:
        h = read_header(f)
        end = os.fstat(f.fileno()).st_size
        if not 9 <= h.cluster_bits <= 21:
            raise Qcow2Problem(f'cluster_bits {h.cluster_bits} invalid')
        cluster = h.cluster_size
        # The refcount table always has a first entry; the L1 table is
        # written whole (l1_size 8-byte entries).
        for what, offset, length in (('refcount table', h.refcount_offset, 8),
                                     ('L1 table', h.l1_offset,
                                      8 * h.l1_size)):
            if length and offset + length > end:
                raise Qcow2Problem(f'{what} at offset {offset} lies past the '
                                   f'end of the file ({end} bytes)')
        x = 62 - (h.cluster_bits - 8)
        for first in range(0, h.l1_size, L1_CHUNK):
            count = min(L1_CHUNK, h.l1_size - first)
            f.seek(h.l1_offset + 8 * first)
            for i, l1 in enumerate(_entries(f.read(8 * count))):
                l2_offset = l1 & OFFSET_MASK
                if not l2_offset:
                    continue
                if l2_offset + cluster > end:
                    raise Qcow2Problem(
                        f'L2 table {first + i} at offset {l2_offset} lies '
                        f'past the end of the file ({end} bytes)')
                f.seek(l2_offset)
                _check_l2(_entries(f.read(cluster)), x, cluster, end,
                          h.extended_l2)


def _check_l2(table: array.array, x: int, cluster: int, end: int,
              extended: bool) -> None:
    offset_mask = (1 << x) - 1
    sectors_mask = (1 << (62 - x)) - 1
    step = 2 if extended else 1
    for i in range(0, len(table), step):
        entry = table[i]
        if not entry:
            continue
        if entry & COMPRESSED:
            start = entry & offset_mask
            extra = (entry >> x) & sectors_mask
            last_sector = (start & ~511) + 512 * extra
            if start >= end or last_sector >= end:
                raise Qcow2Problem(
                    f'compressed cluster at offset {start} lies past the '
                    f'end of the file ({end} bytes)')
            continue
        if entry & ZERO_FLAG and not extended:
            continue  # reads as zeros whatever its offset holds
        offset = entry & OFFSET_MASK
        length = cluster
        if extended:
            allocated = table[i + 1] & 0xffffffff
            if not allocated:
                continue  # no subcluster is read from the file
            length = (cluster // 32) * allocated.bit_length()
        if offset and offset + length > end:
            raise Qcow2Problem(f'data cluster at offset {offset} lies past '
                               f'the end of the file ({end} bytes)')
