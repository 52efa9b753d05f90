"""Ploop's pure parts: DiskDescriptor.xml, the parallels header, sizes.

The expected descriptors and CHS values are what Debian's ``ploop`` 1.15
``restore-descriptor`` wrote for those sizes (the functional tests compare
against the tool itself); parallels images are built here byte by byte.
"""

from __future__ import annotations

import os
import struct

import pytest

from imagebackend import exception
from imagebackend import formats
from imagebackend import parallels

MiB = 1024 * 1024
GiB = 1024 * MiB

# Written by `ploop restore-descriptor -f raw` for a 64 MiB root.hds.
TOOL_64M = '''<?xml version="1.0"?>
<Parallels_disk_image>
  <Disk_Parameters>
    <Disk_size>131072</Disk_size>
    <Cylinders>256</Cylinders>
    <Heads>16</Heads>
    <Sectors>32</Sectors>
    <Padding>0</Padding>
  </Disk_Parameters>
  <StorageData>
    <Storage>
      <Start>0</Start>
      <End>131072</End>
      <Blocksize>2048</Blocksize>
      <Image>
        <GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>
        <Type>Plain</Type>
        <File>root.hds</File>
      </Image>
    </Storage>
  </StorageData>
  <Snapshots>
    <TopGUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</TopGUID>
    <Shot>
      <GUID>{5fbaabe3-6958-40ff-92a7-860e329aab41}</GUID>
      <ParentGUID>{00000000-0000-0000-0000-000000000000}</ParentGUID>
    </Shot>
  </Snapshots>
</Parallels_disk_image>
'''


# -- sizes and CHS -------------------------------------------------------------

@pytest.mark.parametrize('size, rounded', [
    (1, MiB), (MiB, MiB), (MiB + 1, 2 * MiB), (64 * MiB + 4096, 65 * MiB),
    (GiB, GiB)])
def test_round_size(size, rounded):
    assert parallels.round_size(size) == rounded


# (MiB, cylinders, heads, sectors) from the real tool's descriptors.
TOOL_CHS = [(1, 4, 16, 32), (3, 12, 16, 32), (64, 256, 16, 32),
            (503, 2012, 16, 32), (504, 1024, 16, 63), (505, 1026, 16, 63),
            (1000, 2031, 16, 63), (1024, 2080, 16, 63), (2048, 4161, 16, 63),
            (8191, 16642, 16, 63), (8192, 32768, 16, 32),
            (10000, 40000, 16, 32), (1048576, 4194304, 16, 32)]


@pytest.mark.parametrize('mib, cylinders, heads, sectors', TOOL_CHS)
def test_chs_as_the_tool_computes_it(mib, cylinders, heads, sectors):
    assert parallels.chs(mib * 2048) == (cylinders, heads, sectors)


def test_chs_pure_lba_for_odd_sizes():
    assert parallels.chs(131073) == (131073, 1, 1)
    assert parallels.chs(63) == (63, 1, 1)  # one track, no head count fits
    assert parallels.chs(63 * 16) == (1, 16, 63)


# -- the descriptor ------------------------------------------------------------

def test_writer_is_byte_identical_to_the_tool():
    d = parallels.Descriptor(disk_size=131072, ploop_format='raw')
    assert d.to_xml() == TOOL_64M
    assert d.virtual_size == 64 * MiB


def test_expanded_descriptor():
    d = parallels.Descriptor(disk_size=2 * 2097152, ploop_format='expanded',
                             blocksize=2048)
    text = d.to_xml()
    assert '<Type>Compressed</Type>' in text
    assert '<Disk_size>4194304</Disk_size>' in text
    assert '<End>4194304</End>' in text
    assert '<ParentGUID>{00000000-0000-0000-0000-000000000000}' in text
    assert parallels.Descriptor.from_xml(text) == d


def test_parse_the_tools_descriptor():
    d = parallels.Descriptor.from_xml(TOOL_64M)
    assert (d.disk_size, d.ploop_format, d.blocksize, d.file) == (
        131072, 'raw', 2048, 'root.hds')
    assert parallels.Descriptor.from_xml(TOOL_64M.encode()) == d


def _edit(old, new):
    assert old in TOOL_64M
    return TOOL_64M.replace(old, new)


SNAPSHOT = '''      <Image>
        <GUID>{11111111-2222-3333-4444-555555555555}</GUID>
        <Type>Compressed</Type>
        <File>root.hds.snap</File>
      </Image>
    </Storage>'''


@pytest.mark.parametrize('text, reason', [
    ('not xml', 'not XML'),
    ('<Other/>', 'root element'),
    (_edit('<Type>Plain</Type>', '<Type>Sparse</Type>'), 'unknown image type'),
    (_edit('<File>root.hds</File>', '<File>../../etc/shadow</File>'),
     'not a plain name'),
    (_edit('<File>root.hds</File>', '<File>..</File>'), 'not a plain name'),
    (_edit('<End>131072</End>', '<End>65536</End>'), 'does not cover'),
    (_edit('<Disk_size>131072</Disk_size>', '<Disk_size>lots</Disk_size>'),
     'Disk_size'),
    (_edit('<Blocksize>2048</Blocksize>', ''), 'no Blocksize'),
    (_edit('    </Storage>', SNAPSHOT), 'snapshots'),
    (_edit('<TopGUID>{5fbaabe3', '<TopGUID>{6fbaabe3'), 'not the top'),
    (_edit('<Disk_size>131072</Disk_size>', '<Disk_size>0</Disk_size>')
     .replace('<End>131072</End>', '<End>0</End>'), 'positive'),
])
def test_parser_refuses(text, reason):
    with pytest.raises(ValueError, match=reason):
        parallels.Descriptor.from_xml(text)


def test_descriptor_refuses_unknown_format():
    with pytest.raises(ValueError):
        parallels.Descriptor(disk_size=2048, ploop_format='ploop1')


def test_write_and_read_descriptor(tmp_path):
    d = parallels.Descriptor(disk_size=2048 * 5, ploop_format='expanded')
    parallels.write_descriptor(str(tmp_path), d)
    assert sorted(os.listdir(tmp_path)) == ['DiskDescriptor.xml']
    assert parallels.read_descriptor(str(tmp_path)) == d


def test_read_descriptor_wants_root_hds(tmp_path):
    parallels.write_descriptor(str(tmp_path), parallels.Descriptor(
        disk_size=2048, ploop_format='raw', file='other.hds'))
    with pytest.raises(exception.CorruptRecord, match='other.hds'):
        parallels.read_descriptor(str(tmp_path))
    (tmp_path / 'DiskDescriptor.xml').write_text('<broken')
    with pytest.raises(exception.CorruptRecord, match='not XML'):
        parallels.read_descriptor(str(tmp_path))


# -- the parallels header --------------------------------------------------------

def make_parallels(path, size, clusters=None, magic=b'WithouFreSpacExt',
                   cluster=MiB, version=2, flags=0, truncate_by=0):
    """A parallels image built by hand: ``clusters`` maps a guest cluster
    index to its bytes (padded to a cluster)."""
    clusters = clusters or {}
    sectors = size // 512
    per = cluster // 512
    bat_entries = -(-sectors // per)
    data_off = -(-(64 + 4 * bat_entries) // cluster) * per  # whole clusters
    bat = [0] * bat_entries
    body = b''
    first = data_off // per if magic == b'WithouFreSpacExt' else data_off
    for n, index in enumerate(sorted(clusters)):
        if magic == b'WithouFreSpacExt':
            bat[index] = first + n
        else:
            bat[index] = data_off + n * per
        body += clusters[index].ljust(cluster, b'\0')
    nb = sectors if magic == b'WithouFreSpacExt' else sectors & 0xffffffff
    header = struct.pack('<16sIIIIIQIIIQ', magic, version, 16,
                         sectors // (16 * per) or 1, per, bat_entries, nb, 0,
                         data_off, flags, 0)
    table = struct.pack(f'<{bat_entries}I', *bat)
    with open(path, 'wb') as f:
        f.write(header + table)
        f.truncate(data_off * 512)
        f.seek(data_off * 512)
        f.write(body)
        if truncate_by:
            f.truncate(f.tell() - truncate_by)
    return path


def test_header_fields(tmp_path):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB, {0: b'x'})
    h = parallels.read_parallels_header(path)
    assert (h.magic_version, h.version, h.cluster_sectors, h.bat_entries,
            h.nb_sectors, h.data_off) == (2, 2, 2048, 64, 131072, 2048)
    assert (h.virtual_size, h.cluster_size, h.data_offset) == (
        64 * MiB, MiB, MiB)
    assert h.cluster_offset(1) == MiB  # v2: BAT entries count clusters


def test_descriptor_of_an_expanded_image(tmp_path):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB, cluster=2 * MiB)
    d = parallels.Descriptor.expanded(parallels.read_parallels_header(path))
    assert d == parallels.Descriptor(disk_size=131072,
                                     ploop_format='expanded', blocksize=4096)


def test_header_v1_entries_count_sectors(tmp_path):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB, {3: b'y'},
                          magic=b'WithoutFreeSpace')
    h = parallels.read_parallels_header(path)
    assert h.magic_version == 1
    assert h.cluster_offset(2048) == MiB
    assert parallels.read_parallels_bat(path, h)[3] == 2048


def test_v1_size_is_32_bits():
    raw = struct.pack('<16sIIIIIQIIIQ', b'WithoutFreeSpace', 2, 16, 1, 2048,
                      1, (7 << 32) | 2048, 0, 2048, 0, 0)
    assert parallels.parallels_header(raw).nb_sectors == 2048
    raw = b'WithouFreSpacExt' + raw[16:]
    assert parallels.parallels_header(raw).nb_sectors == (7 << 32) | 2048


@pytest.mark.parametrize('data', [b'', b'WithouFreSpacExt', b'QFI\xfb' +
                                  bytes(60), bytes(64)])
def test_not_a_header(data):
    assert parallels.parallels_header(data) is None


def test_inspect_accepts_declared_ploop(tmp_path):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB, {0: b'x', 8: b'y'})
    found = formats.inspect(path, 'ploop')
    assert (found.format, found.virtual_size) == ('ploop', 64 * MiB)
    assert formats.cache_format(found.format) == 'parallels'
    assert formats.qemu_format('ploop') == 'parallels'
    assert formats.qemu_format('qcow2') == 'qcow2'


def test_inspect_refuses_parallels_declared_raw(tmp_path):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB)
    with pytest.raises(exception.ImageUnacceptable, match="'ploop'"):
        formats.inspect(path, 'raw')


def test_inspect_refuses_raw_declared_ploop(tmp_path):
    path = tmp_path / 'r'
    path.write_bytes(b'\xab' * MiB)
    with pytest.raises(exception.ImageUnacceptable, match="'raw'"):
        formats.inspect(str(path), 'ploop')


@pytest.mark.parametrize('kwargs, reason', [
    ({'version': 3}, 'version'),
    ({'truncate_by': 4096, 'clusters': {0: b'x'}}, 'truncated'),
])
def test_inspect_refuses_bad_images(tmp_path, kwargs, reason):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB, **kwargs)
    with pytest.raises(exception.ImageUnacceptable, match=reason):
        formats.inspect(path, 'ploop')


def _patch(path, offset, fmt, value):
    with open(path, 'r+b') as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


@pytest.mark.parametrize('patches, reason', [
    ([(36, '<Q', 0)], 'zero virtual size'),
    ([(28, '<I', 0)], 'zero virtual size or cluster size'),
    ([(32, '<I', 10)], 'does not cover'),          # a BAT too short
    ([(36, '<Q', 1 << 40)], 'does not cover'),     # a size beyond the BAT
    ([(32, '<I', 1000), (48, '<I', 1)], 'overlaps'),  # data inside the BAT
])
def test_inspect_refuses_inconsistent_headers(tmp_path, patches, reason):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB, {0: b'x'})
    for offset, fmt, value in patches:
        _patch(path, offset, fmt, value)
    with pytest.raises(exception.ImageUnacceptable, match=reason):
        formats.inspect(path, 'ploop')


def test_truncated_bat_refused(tmp_path):
    path = str(tmp_path / 'p')
    make_parallels(path, 64 * GiB)  # a 256 KiB BAT
    os.truncate(path, 4096)
    with pytest.raises(exception.ImageUnacceptable, match='BAT'):
        formats.inspect(path, 'ploop')


# -- finishing an expanded image ---------------------------------------------------

def test_finish_expanded_fills_holes_and_sets_flags(tmp_path):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB, {2: b'data'})
    assert parallels.read_parallels_header(path).flags == 0
    with open(path, 'rb') as f:
        before = f.read()
    header = parallels.finish_expanded(path)
    with open(path, 'rb') as f:
        assert f.read() == before  # the bytes are the same...
    fd = os.open(path, os.O_RDONLY)
    try:
        assert parallels._unallocated(fd, os.path.getsize(path)) == []
    finally:
        os.close(fd)
    assert header.flags == 0  # a cluster is allocated: not empty


def test_finish_expanded_marks_empty_image(tmp_path):
    path = make_parallels(str(tmp_path / 'p'), 64 * MiB)
    header = parallels.finish_expanded(path)
    assert header.flags & parallels.PARALLELS_EMPTY
    assert parallels.read_parallels_header(path).flags == \
        parallels.PARALLELS_EMPTY
    # ...and clears it again once a cluster is allocated.
    path = make_parallels(str(tmp_path / 'q'), 64 * MiB, {0: b'x'},
                          flags=parallels.PARALLELS_EMPTY)
    assert parallels.finish_expanded(path).flags == 0
    assert parallels.read_parallels_header(path).flags == 0


def test_finish_expanded_refuses_other_files(tmp_path):
    path = tmp_path / 'raw'
    path.write_bytes(bytes(MiB))
    with pytest.raises(exception.CorruptRecord):
        parallels.finish_expanded(str(path))


def test_unallocated_sees_holes_and_fallocated_ranges(tmp_path):
    path = str(tmp_path / 'f')
    with open(path, 'wb') as f:
        f.write(b'a' * 4096)
        f.truncate(3 * MiB)
        f.seek(2 * MiB)
        f.write(b'b' * 4096)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 3 * MiB, MiB)  # unwritten extent at the end
        ranges = parallels._unallocated(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    # /tmp here is ext4 (FIEMAP): the fallocated MiB counts as unallocated.
    assert ranges[0] == (4096, 2 * MiB)
    assert sum(e - s for s, e in ranges) == 4 * MiB - 2 * 4096
