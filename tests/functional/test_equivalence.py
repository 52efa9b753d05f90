"""The shim path and the native path make equivalent disks.

For each backend and each disk kind, one instance's disk is made through
the legacy ``cache()`` (via the shim) and another's natively; the two must
agree on everything a guest or an operator can see: format, virtual size,
backing chain and its formats, guest-visible bytes for image disks, and
filesystem type, label and size for generated ones; and on the record.
"""

from __future__ import annotations

import os

import pytest

from imagebackend import shim

from tests.functional.conftest import (MiB, Instance, blkid, guest_bytes,
                                       make_ephemeral, make_swap, qemu_info)

BACKENDS = ['flat', 'qcow2']


def _chain(disk) -> list[tuple[str, str]]:
    """(basename, format) of each file in the disk's backing chain."""
    out = []
    info = qemu_info(disk.path, disk.driver_format)
    out.append((os.path.basename(info['filename']), info['format']))
    while 'full-backing-filename' in info:
        fmt = info['backing-filename-format']
        info = qemu_info(info['full-backing-filename'], fmt)
        out.append((os.path.basename(info['filename']), info['format']))
    return out


def _make_pair(backend, image_type, disk_name, create):
    """Make the same disk twice: through the shim and natively."""
    via_shim = backend.by_name(Instance(), disk_name, image_type)
    native = backend.by_name(Instance(), disk_name, image_type)
    create(via_shim, shim_path=True)
    create(native, shim_path=False)
    return via_shim, native


def _assert_same_disk(backend, via_shim, native):
    a = qemu_info(via_shim.path, via_shim.driver_format)
    b = qemu_info(native.path, native.driver_format)
    assert (a['format'], a['virtual-size']) == (b['format'],
                                               b['virtual-size'])
    # Same backing files (the same cache entries) in the same formats; the
    # top file names differ only by instance directory.
    assert _chain(via_shim)[1:] == _chain(native)[1:]
    assert _chain(via_shim)[0][1] == _chain(native)[0][1]
    assert_same_record(backend, via_shim, native)


def assert_same_record(backend, via_shim, native) -> None:
    """The two disks' records agree on everything but how they were made."""
    ra = backend.records.get(via_shim.instance.uuid, via_shim.disk_name)
    rb = backend.records.get(native.instance.uuid, native.disk_name)
    same = ('backend', 'format', 'virtual_size', 'source_type', 'source_id',
            'backing', 'backing_format', 'state')
    assert {f: getattr(ra, f) for f in same} == \
        {f: getattr(rb, f) for f in same}
    assert (ra.provenance['path'], rb.provenance['path']) == ('shim',
                                                              'native')


@pytest.mark.parametrize('image_type', BACKENDS)
@pytest.mark.parametrize('image_format', ['raw', 'qcow2'])
@pytest.mark.parametrize('size', [None, 128 * MiB])
def test_root_from_image(backend, make_image, tmp_path, image_type,
                         image_format, size):
    make_image('img', image_format, 64 * MiB)

    def create(disk, shim_path):
        if shim_path:
            shim.create_from_image(disk, None, 'img', size)
        else:
            disk.create_from_image(None, 'img', size)

    via_shim, native = _make_pair(backend, image_type, 'disk', create)
    _assert_same_disk(backend, via_shim, native)
    assert guest_bytes(via_shim.path, via_shim.driver_format, tmp_path) == \
        guest_bytes(native.path, native.driver_format, tmp_path)


@pytest.mark.parametrize('image_type', BACKENDS)
@pytest.mark.parametrize('kind', ['ephemeral', 'swap'])
def test_generated_disks(backend, image_type, kind):
    if kind == 'ephemeral':
        disk_name = 'disk.local'
        func = make_ephemeral('ephemeral0', 'ext4', 64 * MiB)
        cache_name, size = 'ephemeral_64M_ext4_ephemeral0', 64 * MiB
    else:
        disk_name = 'disk.swap'
        func = make_swap(32 * MiB)
        cache_name, size = 'swap_32', 32 * MiB

    def create(disk, shim_path):
        if shim_path:
            shim.create_from_func(disk, None, func, cache_name, size)
        else:
            disk.create_from_func(None, func, cache_name, size)

    via_shim, native = _make_pair(backend, image_type, disk_name, create)
    _assert_same_disk(backend, via_shim, native)
    # What the guest finds: the same filesystem type, label and size. For
    # Qcow2 both overlay one template; read it through the top file's chain.
    fs_a = blkid(_chain_top_raw(via_shim))
    fs_b = blkid(_chain_top_raw(native))
    for key in ('TYPE', 'LABEL'):
        assert fs_a.get(key) == fs_b.get(key)
    assert fs_a['TYPE'] == ('ext4' if kind == 'ephemeral' else 'swap')


def _chain_top_raw(disk) -> str:
    """A raw file holding what the guest sees (the disk, or its template:
    an overlay just made adds nothing to its template)."""
    if disk.driver_format == 'raw':
        return disk.path
    info = qemu_info(disk.path, disk.driver_format)
    return info['full-backing-filename']
