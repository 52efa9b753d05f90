"""Parallels / ploop images on disk: the image header, the descriptor, and
expanded images as ploop wants them at rest.

A ploop disk is a directory holding its image, ``root.hds``, and the
``DiskDescriptor.xml`` ploop opens it through. The image is in one of
ploop's two formats (Nova's ``pcs_format`` names them): ``raw`` ("Plain" in
the descriptor), a raw file, or ``expanded`` ("Compressed"), ploop's sparse
format, which is qemu's ``parallels`` format byte for byte. Its header
(:class:`ParallelsHeader`) is also how :mod:`imagebackend.formats`
recognises a parallels image, which oslo's format_inspector does not know.

An expanded disk's descriptor is written by this module
(:class:`Descriptor`), with exactly the elements and values ploop
writes: Type Compressed, the image's Blocksize (2048 sectors = 1 MiB),
Disk_size/End = virtual size in sectors, the predefined top GUID
``{5fbaabe3-6958-40ff-92a7-860e329aab41}`` with the all-zero parent.
qemu leaves holes in the file (the header cluster's padding, partly
written clusters) and a zero flags word; ploop wants neither in an image
at rest (``ploop check`` fills the holes and sets the "empty" flag when no
cluster is allocated), so :func:`finish_expanded` does both in-process.
The result is an image ``ploop check -r -f`` passes read-only and
``ploop grow`` / ``ploop snapshot-list`` accept through the descriptor.

How the Ploop backend makes, grows and moves such disks, and which tool
does what, is :mod:`imagebackend.backends.ploop`.
"""

from __future__ import annotations

import array
import dataclasses
import fcntl
import os
import re
import struct
import sys
import xml.etree.ElementTree as ET

from imagebackend import exception
from imagebackend import fileutils

DESCRIPTOR = 'DiskDescriptor.xml'
DATA = 'root.hds'
# ploop's predefined GUID of the top (here: only) delta, and "no parent".
TOP_GUID = '{5fbaabe3-6958-40ff-92a7-860e329aab41}'
NONE_GUID = '{00000000-0000-0000-0000-000000000000}'
SECTOR = 512
# ploop's default block (cluster): 2048 sectors.
BLOCKSIZE = 2048
CLUSTER = BLOCKSIZE * SECTOR
# Nova's pcs_format names -> the descriptor's image Type, and qemu's name.
TYPES = {'raw': 'Plain', 'expanded': 'Compressed'}
QEMU_FORMATS = {'raw': 'raw', 'expanded': 'parallels'}
_PLAIN_NAME = re.compile(r'[A-Za-z0-9._-]{1,255}')


def round_size(size: int) -> int:
    """``size`` rounded up to whole ploop clusters (1 MiB)."""
    return -(-int(size) // CLUSTER) * CLUSTER


# -- the image header ------------------------------------------------------------
#
# The header (QEMU docs/interop/parallels.rst; ploop's include/ploop1_image.h),
# 64 bytes, little endian:
#    0  magic[16]     'WithoutFreeSpace' (v1) or 'WithouFreSpacExt' (v2)
#   16  version u32   2
#   20  heads u32     24  cylinders u32
#   28  tracks u32    the cluster size in 512-byte sectors (2048: 1 MiB)
#   32  bat_entries u32
#   36  nb_sectors u64  the virtual size in sectors (v1: low 32 bits only)
#   44  inuse u32     0x746F6E59 while an image is open for writing
#   48  data_off u32  first data sector (0: right after the BAT)
#   52  flags u32     bit 0: empty image (no cluster allocated)
#   56  ext_off u64   v2 format-extension cluster (0: none)
# followed by the BAT: ``bat_entries`` u32 offsets of the data clusters,
# in sectors (v1) or in clusters (v2); 0 = not allocated (reads as zeros).
# A parallels image has no backing file and refers to nothing outside
# itself; what can be wrong with one is a header that does not describe it.

PARALLELS_MAGICS = {b'WithoutFreeSpace': 1, b'WithouFreSpacExt': 2}
PARALLELS_INUSE = 0x746F6E59
PARALLELS_EMPTY = 0x1
_PARALLELS = struct.Struct('<16sIIIIIQIIIQ')
PARALLELS_HEADER_SIZE = _PARALLELS.size  # 64
PARALLELS_FLAGS_OFFSET = 52


@dataclasses.dataclass(frozen=True)
class ParallelsHeader:
    magic: bytes
    version: int
    heads: int
    cylinders: int
    cluster_sectors: int
    bat_entries: int
    nb_sectors: int
    inuse: int
    data_off: int
    flags: int
    ext_off: int

    @property
    def magic_version(self) -> int:
        """1 for ``WithoutFreeSpace``, 2 for ``WithouFreSpacExt``."""
        return PARALLELS_MAGICS[self.magic]

    @property
    def virtual_size(self) -> int:
        return self.nb_sectors * SECTOR

    @property
    def cluster_size(self) -> int:
        return self.cluster_sectors * SECTOR

    @property
    def data_offset(self) -> int:
        """Byte offset of the first data cluster."""
        if self.data_off:
            return self.data_off * SECTOR
        return PARALLELS_HEADER_SIZE + 4 * self.bat_entries

    def cluster_offset(self, entry: int) -> int:
        """Byte offset of the data cluster a BAT entry points at."""
        unit = SECTOR if self.magic_version == 1 else self.cluster_size
        return entry * unit


def parallels_header(data: bytes) -> ParallelsHeader | None:
    """The header at the start of ``data``, or None if it is not one."""
    if len(data) < PARALLELS_HEADER_SIZE or \
            bytes(data[:16]) not in PARALLELS_MAGICS:
        return None
    fields = list(_PARALLELS.unpack_from(data))
    if fields[0] == b'WithoutFreeSpace':
        fields[6] &= 0xffffffff  # v1: a 32-bit size, then an unused word
    return ParallelsHeader(*fields)


def read_parallels_header(path: str) -> ParallelsHeader | None:
    with open(path, 'rb') as f:
        return parallels_header(f.read(PARALLELS_HEADER_SIZE))


def read_parallels_bat(path: str, header: ParallelsHeader) -> array.array:
    """The BAT entries (u32) of a parallels image."""
    bat = array.array('I')
    with open(path, 'rb') as f:
        f.seek(PARALLELS_HEADER_SIZE)
        data = f.read(4 * header.bat_entries)
    if len(data) != 4 * header.bat_entries:
        raise ValueError('the BAT lies past the end of the file')
    bat.frombytes(data)
    if sys.byteorder != 'little':
        bat.byteswap()
    return bat


# -- DiskDescriptor.xml ----------------------------------------------------------

def chs(sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) as ploop writes them.

    ploop's ``ConvertToCHS`` (include/ploop1_image.h) picks cylinders and
    heads; the descriptor's ``Sectors`` is then the integer quotient
    ``sectors // (cylinders * heads)``, so the product may fall a little
    short of the disk size (2080 * 16 * 63 < 2097152 for 1 GiB), as in the
    descriptors ploop itself writes.
    """
    if 1032192 < sectors < 16777216:
        heads, cylinders = 16, sectors // (63 * 16)
    else:
        per_track = next((n for n in (63, 32, 16, 8) if sectors % n == 0),
                         None)
        rest = sectors // per_track if per_track else 0
        heads = next((n for n in (16, 8, 4, 2) if rest and rest % n == 0),
                     None)
        if per_track is None or heads is None:
            heads, cylinders = 1, sectors  # pure LBA
        else:
            cylinders = rest // heads
    return cylinders, heads, sectors // (cylinders * heads)


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """A one-delta ``DiskDescriptor.xml``: what ploop needs to open a disk."""

    disk_size: int                # sectors
    ploop_format: str             # 'raw' (Plain) or 'expanded' (Compressed)
    blocksize: int = BLOCKSIZE    # sectors per cluster
    file: str = DATA

    def __post_init__(self):
        if self.ploop_format not in TYPES:
            raise ValueError(f'unknown ploop format {self.ploop_format!r}')
        if self.disk_size <= 0 or self.blocksize <= 0:
            raise ValueError('disk size and blocksize must be positive')
        # A plain name in the disk's directory (and nothing XML would need
        # escaped): a descriptor must not point the library elsewhere.
        if not _PLAIN_NAME.fullmatch(self.file) or self.file in ('.', '..'):
            raise ValueError(f'image file {self.file!r} is not a plain name')

    @property
    def virtual_size(self) -> int:
        return self.disk_size * SECTOR

    @classmethod
    def expanded(cls, header: ParallelsHeader) -> 'Descriptor':
        """The descriptor of the expanded image whose header is ``header``:
        its size and its cluster size, as ploop writes them."""
        return cls(disk_size=header.nb_sectors, ploop_format='expanded',
                   blocksize=header.cluster_sectors)

    def to_xml(self) -> str:
        """The descriptor, element for element as ``ploop`` writes it."""
        cylinders, heads, sectors = chs(self.disk_size)
        return f'''<?xml version="1.0"?>
<Parallels_disk_image>
  <Disk_Parameters>
    <Disk_size>{self.disk_size}</Disk_size>
    <Cylinders>{cylinders}</Cylinders>
    <Heads>{heads}</Heads>
    <Sectors>{sectors}</Sectors>
    <Padding>0</Padding>
  </Disk_Parameters>
  <StorageData>
    <Storage>
      <Start>0</Start>
      <End>{self.disk_size}</End>
      <Blocksize>{self.blocksize}</Blocksize>
      <Image>
        <GUID>{TOP_GUID}</GUID>
        <Type>{TYPES[self.ploop_format]}</Type>
        <File>{self.file}</File>
      </Image>
    </Storage>
  </StorageData>
  <Snapshots>
    <TopGUID>{TOP_GUID}</TopGUID>
    <Shot>
      <GUID>{TOP_GUID}</GUID>
      <ParentGUID>{NONE_GUID}</ParentGUID>
    </Shot>
  </Snapshots>
</Parallels_disk_image>
'''

    @classmethod
    def from_xml(cls, text: str | bytes) -> 'Descriptor':
        """Parse a descriptor; ValueError unless it is one delta we can use
        (its file a plain name in the disk's directory)."""
        try:
            root = ET.fromstring(text)
        except ET.ParseError as e:
            raise ValueError(f'not XML: {e}')
        if root.tag != 'Parallels_disk_image':
            raise ValueError(f'root element is {root.tag!r}')

        def value(node, path):
            found = node.find(path)
            if found is None or found.text is None:
                raise ValueError(f'no {path}')
            return found.text.strip()

        def number(node, path):
            try:
                return int(value(node, path))
            except ValueError as e:
                raise ValueError(f'{path}: {e}')

        images = root.findall('./StorageData/Storage/Image')
        storages = root.findall('./StorageData/Storage')
        if len(images) != 1 or len(storages) != 1:
            raise ValueError(f'{len(images)} deltas: a disk with ploop '
                             'snapshots is not supported')
        top = value(root, './Snapshots/TopGUID')
        if value(images[0], 'GUID') != top:
            raise ValueError('the only delta is not the top one')
        kinds = {v: k for k, v in TYPES.items()}
        kind = value(images[0], 'Type')
        if kind not in kinds:
            raise ValueError(f'unknown image type {kind!r}')
        file = value(images[0], 'File')
        disk_size = number(root, './Disk_Parameters/Disk_size')
        if number(storages[0], 'End') != disk_size or \
                number(storages[0], 'Start') != 0:
            raise ValueError('the delta does not cover the disk')
        return cls(disk_size=disk_size, ploop_format=kinds[kind],
                   blocksize=number(storages[0], 'Blocksize'), file=file)


def read_descriptor(directory: str) -> Descriptor:
    """The descriptor of the ploop disk ``directory`` (CorruptRecord if it
    cannot be used)."""
    path = os.path.join(directory, DESCRIPTOR)
    with open(path, 'rb') as f:
        text = f.read()
    try:
        descriptor = Descriptor.from_xml(text)
    except ValueError as e:
        raise exception.CorruptRecord(location=path, reason=str(e))
    if descriptor.file != DATA:
        raise exception.CorruptRecord(
            location=path, reason=f'the image file is {descriptor.file!r}, '
                                  f'not {DATA!r}')
    return descriptor


def write_descriptor(directory: str, descriptor: Descriptor) -> None:
    """Write ``directory/DiskDescriptor.xml`` atomically (temp, fsync,
    rename)."""
    path = os.path.join(directory, DESCRIPTOR)
    tmp = os.path.join(directory, '.' + DESCRIPTOR + '.tmp')
    try:
        with open(tmp, 'w') as f:
            f.write(descriptor.to_xml())
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    finally:
        fileutils.remove_path(tmp)
    fileutils.fsync_dir(directory)


# -- expanded images at rest ------------------------------------------------------

# linux/fiemap.h: FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap)
_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP = struct.Struct('=QQIIII')            # struct fiemap (32 bytes)
_FIEMAP_EXTENT = struct.Struct('=QQQ16xI12x')  # struct fiemap_extent (56)
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_EXTENT_UNWRITTEN = 0x800
_FIEMAP_BATCH = 256


def _fiemap(fd: int, size: int):
    """Yield ``(offset, length, unwritten)`` of a file's extents (FIEMAP,
    after a sync, as ploop reads them)."""
    pos = 0
    while pos < size:
        buf = bytearray(_FIEMAP.size + _FIEMAP_EXTENT.size * _FIEMAP_BATCH)
        _FIEMAP.pack_into(buf, 0, pos, size - pos, _FIEMAP_FLAG_SYNC, 0,
                          _FIEMAP_BATCH, 0)
        fcntl.ioctl(fd, _FS_IOC_FIEMAP, buf)
        mapped = _FIEMAP.unpack_from(buf)[3]
        if not mapped:
            return
        for i in range(mapped):
            logical, _physical, length, flags = _FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP.size + i * _FIEMAP_EXTENT.size)
            yield logical, length, bool(flags & _FIEMAP_EXTENT_UNWRITTEN)
            pos = logical + length
            if flags & _FIEMAP_EXTENT_LAST:
                return


def _unallocated(fd: int, size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of every range of a file not backed by written
    blocks: holes, and unwritten (fallocated) extents, which ploop treats
    the same way."""
    found = []
    try:
        pos = 0
        for offset, length, unwritten in _fiemap(fd, size):
            if offset > pos:
                found.append((pos, offset))
            if unwritten:
                found.append((offset, offset + length))
            pos = max(pos, offset + length)
        if pos < size:
            found.append((pos, size))
        return [(s, min(e, size)) for s, e in found if s < size]
    except OSError:  # no FIEMAP here (e.g. tmpfs): holes only
        pass
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_HOLE)
        except OSError:
            break
        if start >= size:
            break
        try:
            end = os.lseek(fd, start, os.SEEK_DATA)
        except OSError:  # ENXIO: a hole up to the end
            end = size
        found.append((start, end))
        pos = end
    return found


def finish_expanded(path: str) -> ParallelsHeader:
    """Make a qemu-written parallels file an image ploop accepts at rest.

    ploop allocates every byte of an image's header cluster and data
    clusters and treats a hole as damage (``ploop check``: "image is
    sparse"; qemu leaves the header padding and the unwritten parts of
    clusters as holes). It also keeps the header's "empty" flag set exactly
    when no cluster is allocated (qemu always writes 0). Both are fixed here
    in-process; the guest's bytes do not change. Returns the header.
    """
    header = read_parallels_header(path)
    if header is None:
        raise exception.CorruptRecord(location=path,
                                      reason='not a parallels image')
    zeros = bytes(fileutils.CHUNK)
    fd = os.open(path, os.O_RDWR)
    try:
        for start, end in _unallocated(fd, os.fstat(fd).st_size):
            while start < end:
                n = os.pwrite(fd, zeros[:min(len(zeros), end - start)],
                              start)
                start += n
        empty = not any(read_parallels_bat(path, header))
        flags = (header.flags | PARALLELS_EMPTY if empty
                 else header.flags & ~PARALLELS_EMPTY)
        if flags != header.flags:
            os.pwrite(fd, struct.pack('<I', flags),
                      PARALLELS_FLAGS_OFFSET)
            header = dataclasses.replace(header, flags=flags)
    finally:
        os.close(fd)
    return header
