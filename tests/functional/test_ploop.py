"""The Ploop backend on the real ``ploop`` tool and qemu-img.

Every disk here is made by Debian's ``ploop`` 1.15 (``restore-descriptor``,
``grow``) and qemu-img's ``parallels`` format, and then checked by the tool
itself (``ploop check``, ``ploop snapshot-list``, ``ploop grow``) and by
qemu-img reading the guest's bytes back. The tool's kernel-module commands
(``mount``, ``info``) and the crashing ``ploop init`` are not used by the
backend, so nothing here needs them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

import imagebackend
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import parallels
from imagebackend import processes
from imagebackend import shim
from imagebackend import transport as transport_mod
from imagebackend.backends import ploop as ploop_mod

from driver import cli
from driver import flows
from driver import instance as instance_mod
from driver import migration
from tests.functional.conftest import (define_and_read, GiB, Instance, MiB, blkid,
                                       guest_bytes, make_ephemeral,
                                       make_swap, qemu_info, run)
from tests.hosts import make_conf

IMAGE_SIZE = 64 * MiB
MARK_AT = 10 * MiB


# -- helpers -----------------------------------------------------------------

def ploop(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real tool, outside the library (the judge, not the subject)."""
    done = subprocess.run(('ploop',) + args, capture_output=True, text=True)
    if check and done.returncode:
        raise AssertionError(f'ploop {" ".join(args)}: exit '
                             f'{done.returncode}\n{done.stdout}{done.stderr}')
    return done


def qemu_fmt(disk) -> str:
    return ploop_mod.QEMU_FORMATS[disk.ploop_format]


def disk_guest_bytes(disk, tmp_path) -> bytes:
    return guest_bytes(disk.data_path, qemu_fmt(disk), tmp_path)


def image_guest_bytes(path, fmt, tmp_path, size=None) -> bytes:
    """The image as the guest sees it, zero-padded to ``size``."""
    data = guest_bytes(path, fmt, tmp_path)
    if size:
        data += bytes(size - len(data))
    return data


def sparse_copy(src: str, dst: str) -> None:
    run('cp', '-a', '--sparse=always', src, dst)


def assert_tool_accepts(disk, tmp_path) -> None:
    """The real ploop tool opens the disk through its descriptor, and the
    image passes its own check."""
    listing = ploop('snapshot-list', disk.descriptor_path).stdout
    assert parallels.TOP_GUID in listing
    assert disk.data_path in listing
    size = disk.descriptor().virtual_size
    if disk.ploop_format == 'expanded':
        # Read-only, forced: nothing repaired, nothing to repair.
        ploop('check', '-r', '-f', disk.data_path)
    elif size <= 256 * MiB:
        # A raw ploop image is sparse, as Nova's copies were: ploop fills
        # the holes when it opens it through its descriptor (on a copy
        # here: that allocates the whole disk); afterwards it is clean.
        copy = str(tmp_path / f'check-{os.path.basename(disk.path)}')
        sparse_copy(disk.path, copy)
        ploop('check', os.path.join(copy, ploop_mod.DESCRIPTOR))
        ploop('check', '-r', '-f', '-R', '-b', '2048',
              os.path.join(copy, ploop_mod.DATA))
        shutil.rmtree(copy)
    # And the tool grows it offline to the size it has (nothing to write,
    # but descriptor and image are opened and checked), on a copy.
    copy = str(tmp_path / f'grow-{os.path.basename(disk.path)}')
    sparse_copy(disk.path, copy)
    ploop('grow', '-s', f'{size // 1024}K',
          os.path.join(copy, ploop_mod.DESCRIPTOR))
    assert ploop_mod.read_descriptor(copy).virtual_size == size
    shutil.rmtree(copy)


def assert_disk(disk, backend, fmt, size) -> None:
    """Record, descriptor and data agree with each other and with ``fmt``
    and ``size``."""
    rec = backend.records.get(disk.instance.uuid, disk.disk_name)
    assert (rec.backend, rec.format, rec.state, rec.virtual_size) == (
        'ploop', 'ploop', 'created', size)
    assert rec.location == disk.path
    assert rec.provenance['ploop_format'] == fmt
    assert sorted(n for n in os.listdir(disk.path)
                  if not n.endswith('.lck')) == [ploop_mod.DESCRIPTOR,
                                                 ploop_mod.DATA]
    desc = disk.descriptor()
    assert (desc.ploop_format, desc.virtual_size, desc.blocksize) == (
        fmt, size, 2048)
    info = qemu_info(disk.data_path, ploop_mod.QEMU_FORMATS[fmt])
    assert info['format'] == ploop_mod.QEMU_FORMATS[fmt]
    assert info['virtual-size'] == size
    if fmt == 'expanded':
        run('qemu-img', 'check', '-q', '-f', 'parallels', disk.data_path)


@pytest.fixture
def image(make_image, host):
    """image(kind) -> (image id, path, qemu format) for 'raw' / 'ploop' /
    'qcow2' images, each holding the same guest bytes."""
    def make(kind: str, image_id: str | None = None):
        image_id = image_id or f'img-{kind}'
        if kind == 'ploop':
            path = make_image(image_id, 'parallels', IMAGE_SIZE,
                              declared='ploop')
            return image_id, path, 'parallels'
        return image_id, make_image(image_id, kind, IMAGE_SIZE), kind
    return make


def new_disk(backend, name='disk'):
    return backend.by_name(Instance(), name, 'ploop')


def expected_format(kind: str, force_raw: bool) -> str:
    return 'raw' if force_raw or kind == 'raw' else 'expanded'


# -- root from an image: native and shim ---------------------------------------

@pytest.mark.parametrize('kind', ['raw', 'ploop', 'qcow2'])
@pytest.mark.parametrize('force_raw', [False, True])
@pytest.mark.parametrize('size', [None, 128 * MiB])
@pytest.mark.parametrize('path', ['native', 'shim'])
def test_root_from_image(host, backend, image, tmp_path, kind, force_raw,
                         size, path):
    host.set_override('force_raw_images', force_raw)
    image_id, image_path, image_fmt = image(kind)
    disk = new_disk(backend)
    if path == 'native':
        disk.create_from_image(None, image_id, size)
    else:
        shim.create_from_image(disk, None, image_id, size)
    fmt = expected_format(kind, force_raw)
    final = size or IMAGE_SIZE
    assert disk.exists()
    assert_disk(disk, backend, fmt, final)
    rec = backend.records.get(disk.instance.uuid, 'disk')
    assert (rec.source_type, rec.source_id, rec.provenance['path']) == (
        'image', image_id, path)
    assert disk_guest_bytes(disk, tmp_path) == image_guest_bytes(
        image_path, image_fmt, tmp_path, final)
    assert_tool_accepts(disk, tmp_path)


def _native_commands(backend, image_id, size):
    disk = new_disk(backend)
    backend.image_cache.fetch_image(None, image_id)  # cache already warm
    with processes.recording() as commands:
        disk.create_from_image(None, image_id, size)
    return disk, [c[:2] for c in commands]


def test_commands_root_raw_image(backend, image):
    image_id, _p, _f = image('raw')
    for size in (None, 256 * MiB):
        disk, commands = _native_commands(backend, image_id, size)
        # The copy is in-process, the extension a truncate: one command.
        assert commands == [('ploop', 'restore-descriptor')]
        assert disk.ploop_format == 'raw'


def test_commands_root_ploop_image(host, backend, image):
    host.set_override('force_raw_images', False)
    image_id, _p, _f = image('ploop')
    disk, commands = _native_commands(backend, image_id, None)
    assert commands == []  # a copy and a descriptor written in-process
    disk, commands = _native_commands(backend, image_id, 256 * MiB)
    assert commands == [('qemu-img', 'create'), ('qemu-img', 'convert')]
    assert disk.ploop_format == 'expanded'


def test_commands_root_qcow2_image_kept_sparse(host, backend, image):
    host.set_override('force_raw_images', False)
    image_id, _p, _f = image('qcow2')
    disk, commands = _native_commands(backend, image_id, None)
    assert commands == [('qemu-img', 'convert')]
    assert disk.ploop_format == 'expanded'


def test_ploop_image_cached_as_parallels(host, backend, image):
    host.set_override('force_raw_images', False)
    image_id, path, _f = image('ploop')
    entry = backend.image_cache.fetch_image(None, image_id)
    assert (entry.format, entry.virtual_size) == ('parallels', IMAGE_SIZE)
    # With force_raw_images a host's cache keeps a raw copy instead.
    conf = make_conf(host.instances_path + '-2',
                     host.imagebackend.images_dir)
    conf.set_override('force_raw_images', True)
    other = imagebackend.Backend(conf=conf)
    assert other.image_cache.fetch_image(None, image_id).format == 'raw'


def test_ploop_image_without_deep_inspection(host, backend, image):
    host.set_override('force_raw_images', False)
    host.set_override('disable_deep_image_inspection', True,
                      group='workarounds')
    image_id, _p, _f = image('ploop')
    entry = backend.image_cache.fetch_image(None, image_id)
    assert (entry.format, entry.virtual_size) == ('parallels', IMAGE_SIZE)


@pytest.mark.parametrize('bytes_fmt, declared', [('raw', 'ploop'),
                                                 ('qcow2', 'ploop'),
                                                 ('parallels', 'raw'),
                                                 ('parallels', 'qcow2')])
def test_declared_format_must_match_bytes(host, backend, make_image,
                                          bytes_fmt, declared):
    make_image('liar', bytes_fmt, IMAGE_SIZE, declared=declared)
    disk = new_disk(backend)
    with pytest.raises(exception.ImageUnacceptable):
        disk.create_from_image(None, 'liar')
    assert not os.path.exists(disk.instance_dir)
    assert backend.records.list(disk.instance.uuid) == []
    assert backend.image_cache.entries() == []


def test_truncated_ploop_image_refused(host, backend, make_image):
    path = make_image('cut', 'parallels', IMAGE_SIZE, declared='ploop')
    os.truncate(path, os.path.getsize(path) - 512 * 1024)
    disk = new_disk(backend)
    with pytest.raises(exception.ImageUnacceptable, match='truncated'):
        disk.create_from_image(None, 'cut')
    assert backend.image_cache.entries() == []
    assert not os.path.exists(disk.instance_dir)


def test_image_of_odd_size_padded_to_whole_clusters(backend, make_image,
                                                    tmp_path):
    path = make_image('odd', 'raw', IMAGE_SIZE + 4096)
    disk = new_disk(backend)
    disk.create_from_image(None, 'odd')
    assert_disk(disk, backend, 'raw', IMAGE_SIZE + MiB)
    assert disk_guest_bytes(disk, tmp_path) == image_guest_bytes(
        path, 'raw', tmp_path, IMAGE_SIZE + MiB)


def test_too_small_refused_before_anything(backend, image):
    image_id, _p, _f = image('raw')
    disk = new_disk(backend)
    with pytest.raises(exception.DiskTooSmall):
        disk.create_from_image(None, image_id, IMAGE_SIZE // 2)
    assert not os.path.exists(disk.instance_dir)


# -- equivalence of the shim and native paths ----------------------------------

def _same(backend, via_shim, native, tmp_path):
    a, b = (backend.records.get(d.instance.uuid, d.disk_name)
            for d in (via_shim, native))
    fields = ('backend', 'format', 'virtual_size', 'source_type',
              'source_id', 'backing', 'backing_format', 'state')
    assert {f: getattr(a, f) for f in fields} == \
        {f: getattr(b, f) for f in fields}
    assert a.provenance['ploop_format'] == b.provenance['ploop_format']
    assert (a.provenance['path'], b.provenance['path']) == ('shim', 'native')
    da, db = via_shim.descriptor(), native.descriptor()
    assert (da.ploop_format, da.disk_size, da.blocksize) == \
        (db.ploop_format, db.disk_size, db.blocksize)
    ia = qemu_info(via_shim.data_path, qemu_fmt(via_shim))
    ib = qemu_info(native.data_path, qemu_fmt(native))
    assert (ia['format'], ia['virtual-size']) == (ib['format'],
                                                 ib['virtual-size'])


@pytest.mark.parametrize('kind', ['raw', 'ploop'])
@pytest.mark.parametrize('force_raw', [False, True])
@pytest.mark.parametrize('size', [None, 128 * MiB])
def test_equivalence_root(host, backend, image, tmp_path, kind, force_raw,
                          size):
    host.set_override('force_raw_images', force_raw)
    image_id, _p, _f = image(kind)
    via_shim, native = new_disk(backend), new_disk(backend)
    shim.create_from_image(via_shim, None, image_id, size)
    native.create_from_image(None, image_id, size)
    _same(backend, via_shim, native, tmp_path)
    assert disk_guest_bytes(via_shim, tmp_path) == \
        disk_guest_bytes(native, tmp_path)


@pytest.mark.parametrize('kind', ['ephemeral', 'swap'])
def test_equivalence_generated(backend, tmp_path, kind):
    if kind == 'ephemeral':
        name, func = 'disk.local', make_ephemeral('ephemeral0', 'ext4',
                                                  64 * MiB)
        cache_name = 'ephemeral_64M_ext4_ephemeral0'
    else:
        name, func, cache_name = 'disk.swap', make_swap(32 * MiB), 'swap_32'
    size = 64 * MiB if kind == 'ephemeral' else 32 * MiB
    via_shim, native = new_disk(backend, name), new_disk(backend, name)
    shim.create_from_func(via_shim, None, func, cache_name, size)
    native.create_from_func(None, func, cache_name, size)
    _same(backend, via_shim, native, tmp_path)
    fs = [blkid(d.data_path) for d in (via_shim, native)]
    assert fs[0].get('TYPE') == fs[1].get('TYPE') == (
        'ext4' if kind == 'ephemeral' else 'swap')
    assert fs[0].get('LABEL') == fs[1].get('LABEL')
    if kind == 'ephemeral':
        assert fs[0]['LABEL'] == 'ephemeral0'
    for disk in (via_shim, native):
        assert_disk(disk, backend, 'raw', size)
        assert_tool_accepts(disk, tmp_path)
    # Neither path keeps a template: the disk is written in place.
    assert not os.path.exists(backend.image_cache.path(cache_name))


# -- ephemeral and swap --------------------------------------------------------

def test_ephemeral_native_commands_and_label(backend, tmp_path):
    disk = new_disk(backend, 'disk.local')
    func = make_ephemeral('ephemeral0', 'ext4', 64 * MiB)
    with processes.recording() as commands:
        disk.create_from_func(None, func, 'ephemeral_64M_ext4_ephemeral0',
                              64 * MiB)
    assert [c[0] for c in commands] == ['truncate', 'mkfs', 'ploop']
    assert commands[-1][:4] == ('ploop', 'restore-descriptor', '-f', 'raw')
    info = blkid(disk.data_path)
    assert (info['TYPE'], info['LABEL']) == ('ext4', 'ephemeral0')
    rec = backend.records.get(disk.instance.uuid, 'disk.local')
    assert (rec.source_type, rec.source_id) == (
        'func', 'ephemeral_64M_ext4_ephemeral0')
    assert_disk(disk, backend, 'raw', 64 * MiB)
    assert backend.image_cache.entries() == []


def test_swap_native(backend, tmp_path):
    disk = new_disk(backend, 'disk.swap')
    with processes.recording() as commands:
        disk.create_from_func(None, make_swap(32 * MiB), 'swap_32', 32 * MiB)
    assert [c[0] for c in commands] == ['truncate', 'mkswap', 'ploop']
    assert blkid(disk.data_path)['TYPE'] == 'swap'
    assert_disk(disk, backend, 'raw', 32 * MiB)
    assert_tool_accepts(disk, tmp_path)


def test_driver_templates(backend):
    """The driver's own template functions write into root.hds."""
    from driver import templates
    disk = new_disk(backend, 'disk.local')
    tpl = templates.ephemeral(backend.conf, 64 * MiB, 'ephemeral0', 'linux')
    disk.create_from_func(None, tpl, tpl.cache_name, 64 * MiB)
    assert blkid(disk.data_path)['LABEL'] == 'ephemeral0'
    swap = new_disk(backend, 'disk.swap')
    tpl = templates.Swap(16 * MiB)
    swap.create_from_func(None, tpl, tpl.cache_name, 16 * MiB)
    assert blkid(swap.data_path)['TYPE'] == 'swap'


# -- the descriptor, against the tool -------------------------------------------

@pytest.mark.parametrize('mib', [1, 64, 504, 1000, 1024, 8192, 20480])
def test_descriptor_writer_matches_the_tool(tmp_path, mib):
    d = tmp_path / 'disk'
    d.mkdir()
    with open(d / 'root.hds', 'wb') as f:
        f.truncate(mib * MiB)
    ploop('restore-descriptor', '-f', 'raw', str(d), str(d / 'root.hds'))
    theirs = (d / ploop_mod.DESCRIPTOR).read_text()
    ours = ploop_mod.Descriptor(disk_size=mib * 2048, ploop_format='raw')
    assert ours.to_xml() == theirs
    assert ploop_mod.Descriptor.from_xml(theirs) == ours


def test_expanded_descriptor_as_the_tool_writes_it(tmp_path):
    """For an EMPTY image the v1 magic makes the tool write an expanded
    descriptor itself (real-backends.md section 5): ours is identical."""
    d = tmp_path / 'disk'
    d.mkdir()
    data = str(d / 'root.hds')
    run('qemu-img', 'create', '-q', '-f', 'parallels', data, str(GiB))
    with open(data, 'r+b') as f:
        f.write(b'WithoutFreeSpace')
    ploop('restore-descriptor', '-f', 'expanded', str(d), data)
    theirs = (d / ploop_mod.DESCRIPTOR).read_text()
    header = parallels.read_parallels_header(data)
    ours = ploop_mod.Descriptor(disk_size=header.nb_sectors,
                                ploop_format='expanded',
                                blocksize=header.cluster_sectors)
    assert ours.to_xml() == theirs


# -- resize ---------------------------------------------------------------------

@pytest.mark.parametrize('kind', ['raw', 'ploop'])
def test_grow_and_refuse_shrink(host, backend, image, tmp_path, kind):
    host.set_override('force_raw_images', False)
    image_id, image_path, image_fmt = image(kind)
    disk = new_disk(backend)
    disk.create_from_image(None, image_id)
    fmt = disk.ploop_format
    with processes.recording() as commands:
        disk.resize_image(128 * MiB)
    if fmt == 'raw':
        assert commands == [('ploop', 'grow', '-s', f'{128 * 1024}K',
                             disk.descriptor_path)]
    else:
        assert [c[:2] for c in commands] == [('qemu-img', 'create'),
                                             ('qemu-img', 'convert')]
    assert_disk(disk, backend, fmt, 128 * MiB)
    assert disk_guest_bytes(disk, tmp_path) == image_guest_bytes(
        image_path, image_fmt, tmp_path, 128 * MiB)
    assert_tool_accepts(disk, tmp_path)
    # A size that is not whole MiB is rounded up to the next MiB.
    disk.resize_image(128 * MiB + 1)
    assert_disk(disk, backend, fmt, 129 * MiB)

    before = fileutils.sha256_file(disk.data_path)
    with processes.recording() as commands:
        with pytest.raises(exception.CannotShrink):
            disk.resize_image(64 * MiB)
        disk.resize_image(129 * MiB)  # the same size: nothing to do
    assert commands == []
    assert fileutils.sha256_file(disk.data_path) == before
    assert backend.records.get(disk.instance.uuid,
                               'disk').virtual_size == 129 * MiB


def test_ploop_grow_is_not_used_on_expanded_images(tmp_path):
    """Why expanded disks are grown by copy: ``ploop grow`` on a qemu-made
    image exits 0 but marks an image holding data "empty" (flags bit 0),
    which qemu's spec says means "consider the image clear"."""
    d = tmp_path / 'disk'
    d.mkdir()
    data = str(d / 'root.hds')
    run('qemu-img', 'create', '-q', '-f', 'parallels', data, str(64 * MiB))
    run('qemu-io', '-f', 'parallels', '-c', 'write -P 0xab 0 1M', data)
    header = ploop_mod.finish_expanded(data)
    assert not header.flags & parallels.PARALLELS_EMPTY
    ploop_mod.write_descriptor(str(d), ploop_mod.Descriptor(
        disk_size=header.nb_sectors, ploop_format='expanded'))
    ploop('grow', '-s', '128M', str(d / ploop_mod.DESCRIPTOR))
    assert parallels.read_parallels_header(data).flags & \
        parallels.PARALLELS_EMPTY


def test_failed_grow_changes_nothing(backend, image, monkeypatch, tmp_path):
    image_id, _p, _f = image('raw')
    disk = new_disk(backend)
    disk.create_from_image(None, image_id)
    _wrap_tool(monkeypatch, tmp_path, 'ploop', 'grow')
    with pytest.raises(exception.ProcessError):
        disk.resize_image(128 * MiB)
    rec = backend.records.get(disk.instance.uuid, 'disk')
    assert (rec.state, rec.virtual_size) == ('created', IMAGE_SIZE)
    assert disk.exists()


# -- libvirt and snapshots --------------------------------------------------------

def test_libvirt_info_defines_a_domain(backend, image):
    image_id, _p, _f = image('raw')
    instance = Instance()
    disk = backend.by_name(instance, 'disk', 'ploop',
                           disk_info_mapping={'bus': 'scsi', 'dev': 'sda',
                                              'type': 'disk'})
    disk.create_from_image(None, image_id)
    disk = backend.from_metadata(instance, 'disk',
                                 {'bus': 'scsi', 'dev': 'sda',
                                  'type': 'disk'})
    xml = disk.libvirt_info('writeback', {'quota:disk_read_iops_sec': '50'},
                            disk_unit=0).to_xml()
    back, = define_and_read([xml], f'ploop-{instance.uuid}')
    assert back.get('type') == 'file'
    assert back.find('driver').get('type') == 'ploop'
    assert back.find('driver').get('cache') == 'writeback'
    # Nova's source for a ploop disk: the directory.
    assert back.find('source').get('file') == disk.path
    assert back.find('target').get('dev') == 'sda'
    assert back.find('iotune/read_iops_sec').text == '50'


@pytest.mark.parametrize('kind', ['raw', 'ploop'])
@pytest.mark.parametrize('out_format', ['raw', 'qcow2'])
def test_snapshot_extract(host, backend, image, tmp_path, kind, out_format):
    host.set_override('force_raw_images', False)
    image_id, image_path, image_fmt = image(kind)
    disk = new_disk(backend)
    disk.create_from_image(None, image_id)
    target = str(tmp_path / f'snap.{out_format}')
    with processes.recording() as commands:
        disk.snapshot_extract(target, out_format)
    assert commands[0][:6] == ('qemu-img', 'convert', '-q', '-f',
                               qemu_fmt(disk), '-O')
    assert guest_bytes(target, out_format, tmp_path) == image_guest_bytes(
        image_path, image_fmt, tmp_path)


# -- existence, cleanup on failure ------------------------------------------------

def _wrap_tool(monkeypatch, tmp_path, tool, subcommand):
    """Put a ``tool`` on PATH that runs the real one for ``subcommand`` and
    is then killed (SIGKILL) before it can report success: a command that
    dies mid-way, after doing its work."""
    real = shutil.which(tool)
    bindir = tmp_path / f'wrap-{tool}-{subcommand}'
    bindir.mkdir()
    script = bindir / tool
    script.write_text(
        '#!/bin/sh\n'
        f'if [ "$1" = "{subcommand}" ]; then\n'
        f'    "{real}" "$@"\n'
        '    kill -9 $$\n'
        'fi\n'
        f'exec "{real}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv('PATH', f'{bindir}:{os.environ["PATH"]}')


def _nothing_left(backend, disk):
    assert not os.path.lexists(disk.path)
    assert backend.records.list(disk.instance.uuid) == []
    assert not os.path.exists(disk.instance_dir)


@pytest.mark.parametrize('path', ['native', 'shim'])
def test_restore_descriptor_killed_leaves_nothing(backend, image,
                                                  monkeypatch, tmp_path,
                                                  path):
    image_id, _p, _f = image('raw')
    backend.image_cache.fetch_image(None, image_id)
    _wrap_tool(monkeypatch, tmp_path, 'ploop', 'restore-descriptor')
    disk = new_disk(backend)
    with pytest.raises(exception.ProcessError) as e:
        if path == 'native':
            disk.create_from_image(None, image_id, 128 * MiB)
        else:
            shim.create_from_image(disk, None, image_id, 128 * MiB)
    assert e.value.exit_code == -9
    _nothing_left(backend, disk)
    # The cache entry is not the disk's: it stays.
    assert backend.image_cache.get(names.image_cache_name(image_id))


def test_qemu_img_killed_leaves_nothing(host, backend, image, monkeypatch,
                                        tmp_path):
    host.set_override('force_raw_images', False)
    image_id, _p, _f = image('ploop')
    backend.image_cache.fetch_image(None, image_id)
    _wrap_tool(monkeypatch, tmp_path, 'qemu-img', 'convert')
    disk = new_disk(backend)
    with pytest.raises(exception.ProcessError):
        disk.create_from_image(None, image_id, 128 * MiB)
    _nothing_left(backend, disk)


@pytest.mark.parametrize('path', ['native', 'shim'])
def test_template_failure_leaves_nothing(backend, path):
    def func(target):
        make_ephemeral('ephemeral0', 'ext4', 64 * MiB)(target)
        assert os.path.getsize(target) == 64 * MiB  # root.hds was written
        raise RuntimeError('template broke after writing root.hds')

    disk = new_disk(backend, 'disk.local')
    with pytest.raises(RuntimeError):
        if path == 'native':
            disk.create_from_func(None, func, 'ephemeral_x', 64 * MiB)
        else:
            shim.create_from_func(disk, None, func, 'ephemeral_x', 64 * MiB)
    _nothing_left(backend, disk)


def test_another_backends_file_is_never_overwritten(backend, image):
    image_id, _p, _f = image('raw')
    instance = Instance()
    qcow = backend.by_name(instance, 'disk', 'qcow2')
    qcow.create_from_image(None, image_id)
    before = fileutils.sha256_file(qcow.path)
    disk = backend.by_name(instance, 'disk', 'ploop')
    assert disk.exists()  # the place is taken
    with pytest.raises(exception.DiskExists):
        disk.create_from_image(None, image_id)
    assert fileutils.sha256_file(qcow.path) == before
    assert backend.records.get(instance.uuid, 'disk').backend == 'qcow2'


def test_directory_without_descriptor_is_not_a_disk(backend, image,
                                                    tmp_path):
    image_id, _p, _f = image('raw')
    disk = new_disk(backend)
    os.makedirs(disk.path)  # what a creation killed after mkdir leaves
    with open(disk.data_path, 'wb') as f:
        f.write(b'half')
    assert not disk.exists()
    disk.create_from_image(None, image_id)
    assert_disk(disk, backend, 'raw', IMAGE_SIZE)


def test_delete_removes_directory_and_record(backend, image):
    image_id, _p, _f = image('raw')
    disk = new_disk(backend)
    disk.create_from_image(None, image_id)
    disk.delete()
    assert not os.path.lexists(disk.path)
    assert backend.records.list(disk.instance.uuid) == []


def test_check_backing(backend, image):
    image_id, _p, _f = image('raw')
    disk = new_disk(backend)
    with pytest.raises(exception.DiskNotFound):
        disk.check_backing_from_image(None, image_id)
    disk.create_from_image(None, image_id)
    # Nothing in the cache is needed by the disk: even with the entry gone.
    backend.image_cache.remove(names.image_cache_name(image_id))
    with processes.recording() as commands:
        disk.check_backing_from_image(None, image_id)
        disk.check_backing_from_func(None, None, 'swap_32')
    assert commands == []
    assert backend.image_cache.entries() == []


# -- legacy cache() ------------------------------------------------------------

def test_legacy_cache_commands_like_nova(backend, image):
    """Nova's create_image through cache(): the base is copied with
    ``cp -r``, the descriptor restored, then ``ploop grow``."""
    image_id, _p, _f = image('raw')
    disk = new_disk(backend)
    with processes.recording() as commands:
        shim.create_from_image(disk, None, image_id, 128 * MiB)
    tools = [c[:2] for c in commands if c[0] != 'qemu-img']
    assert tools == [('cp', '-r'), ('ploop', 'restore-descriptor'),
                     ('ploop', 'grow')]
    rec = backend.records.get(disk.instance.uuid, 'disk')
    assert rec.provenance['path'] == 'shim'


def test_legacy_cache_on_existing_disk_refetches_only_base(backend, image):
    image_id, _p, _f = image('raw')
    disk = new_disk(backend)
    disk.create_from_image(None, image_id)
    before = fileutils.sha256_file(disk.data_path)
    name = names.image_cache_name(image_id)
    backend.image_cache.remove(name)
    shim.check_backing_from_image(disk, None, image_id)
    assert backend.image_cache.get(name) is not None
    assert fileutils.sha256_file(disk.data_path) == before


# -- create_empty (live migration destination) ----------------------------------

@pytest.mark.parametrize('kind', ['raw', 'ploop'])
def test_create_empty_like_record(host, backend, image, tmp_path, kind):
    host.set_override('force_raw_images', False)
    image_id, _p, _f = image(kind)
    source = new_disk(backend)
    source.create_from_image(None, image_id, 128 * MiB)
    record = backend.records.get(source.instance.uuid, 'disk')
    empty = backend.by_name(Instance(), 'disk', 'ploop')
    empty.create_empty(record)
    fmt = record.provenance['ploop_format']
    assert_disk(empty, backend, fmt, 128 * MiB)
    mine = backend.records.get(empty.instance.uuid, 'disk')
    assert (mine.source_type, mine.source_id) == ('image', image_id)
    assert mine.provenance['purpose'] == 'live-migration'
    assert fileutils.allocated_bytes(empty.path) <= 2 * MiB
    assert disk_guest_bytes(empty, tmp_path) == bytes(128 * MiB)
    assert_tool_accepts(empty, tmp_path)


# -- driver flows on two hosts ----------------------------------------------------

class Hosts:
    """Two hosts sharing an image folder (as tests/functional/test_flows)."""

    def __init__(self, tmp_path):
        self.images = str(tmp_path / 'images')
        os.makedirs(self.images)
        self.paths = {h: str(tmp_path / h / 'instances') for h in 'ab'}
        for p in self.paths.values():
            os.makedirs(p)
        self.transport = transport_mod.LocalTransport(self.paths)
        self.confs = {h: make_conf(p, self.images)
                      for h, p in self.paths.items()}
        for conf in self.confs.values():
            conf.set_override('images_type', 'ploop', group='libvirt')

    def backend(self, host: str) -> imagebackend.Backend:
        return imagebackend.Backend(conf=self.confs[host],
                                    transport=self.transport)

    def add_image(self, image_id: str, fmt: str = 'qcow2',
                  pattern: int = 0xab) -> str:
        declared = 'ploop' if fmt == 'parallels' else fmt
        path = os.path.join(self.images, f'{image_id}.{declared}')
        run('qemu-img', 'create', '-q', '-f', fmt, path, str(256 * MiB))
        run('qemu-io', '-f', fmt, '-c', f'write -P {pattern} 0 1M', path)
        return path

    def cleanup(self):
        # Disks grown by ploop are allocated: do not keep GiBs in tmp.
        for p in self.paths.values():
            shutil.rmtree(p, ignore_errors=True)


@pytest.fixture
def hosts(tmp_path):
    h = Hosts(tmp_path)
    yield h
    h.cleanup()


def new_instance(**flavor) -> instance_mod.Instance:
    flavor = {'root_gb': 1, 'ephemeral_gb': 1, 'swap': 64, **flavor}
    return instance_mod.Instance(image_ref='img', name='vm',
                                 flavor=instance_mod.Flavor(**flavor))


def _marker(disk, op, pattern=0x77):
    fmt = qemu_fmt(disk)
    # qemu-io opens read-write unless told not to (and a parallels image
    # opened read-write is changed on close).
    readonly = ['-r'] if op == 'read' else []
    out = run('qemu-io', *readonly, '-f', fmt, '-c',
              f'{op} -P {pattern} {MARK_AT} 64k', disk.data_path)
    return 'Pattern verification failed' not in out


def test_flow_spawn(hosts, tmp_path):
    hosts.add_image('img')
    instance = new_instance()
    a = hosts.backend('a')
    mapping = instance_mod.disk_mapping(instance)
    assert flows.spawn(a, None, instance, mapping) == [
        'disk', 'disk.local', 'disk.swap']
    disks = {n: a.from_metadata(instance, n) for n in mapping}
    assert {n: (d.image_type, d.ploop_format, d.virtual_size())
            for n, d in disks.items()} == {
        'disk': ('ploop', 'raw', GiB), 'disk.local': ('ploop', 'raw', GiB),
        'disk.swap': ('ploop', 'raw', 64 * MiB)}
    assert (blkid(disks['disk.local'].data_path)['TYPE'],
            blkid(disks['disk.local'].data_path)['LABEL']) == (
        'ext4', 'ephemeral0')
    assert blkid(disks['disk.swap'].data_path)['TYPE'] == 'swap'
    for d in disks.values():
        assert_tool_accepts(d, tmp_path)
    assert flows.spawn(a, None, instance, mapping) == []


@pytest.mark.parametrize('kind', ['raw', 'ploop'])
def test_flow_cold_migration_bigger_flavor(hosts, tmp_path, kind):
    if kind == 'ploop':
        hosts.add_image('img', 'parallels')
        for conf in hosts.confs.values():
            conf.set_override('force_raw_images', False)
    else:
        hosts.add_image('img')
    instance = new_instance()
    a = hosts.backend('a')
    mapping = instance_mod.disk_mapping(instance)
    flows.spawn(a, None, instance, mapping)
    root = a.from_metadata(instance, 'disk')
    root_format = root.ploop_format
    assert root_format == ('expanded' if kind == 'ploop' else 'raw')
    _marker(root, 'write')

    copied = migration.migrate_disks(a, instance, mapping, 'b',
                                     hosts.transport)
    assert sorted(copied) == ['disk', 'disk.local']  # swap is recreated

    instance.flavor = instance_mod.Flavor(root_gb=2, ephemeral_gb=2,
                                          swap=128)
    new_mapping = instance_mod.disk_mapping(instance)
    b = hosts.backend('b')
    done = flows.finish_migration(b, None, instance, new_mapping,
                                  source_host='a')
    assert sorted(done['grown']) == ['disk', 'disk.local']
    assert done['created'] == ['disk.swap']
    disks = {n: b.from_metadata(instance, n) for n in new_mapping}
    assert {n: d.virtual_size() for n, d in disks.items()} == {
        'disk': 2 * GiB, 'disk.local': 2 * GiB, 'disk.swap': 128 * MiB}
    for name, d in disks.items():
        assert d.path.startswith(hosts.paths['b'])
        rec = b.records.get(instance.uuid, name)
        assert rec.location == d.path
        assert_disk(d, b, d.ploop_format, rec.virtual_size)
    assert disks['disk'].ploop_format == root_format
    assert _marker(disks['disk'], 'read')
    assert blkid(disks['disk.local'].data_path)['LABEL'] == 'ephemeral0'
    assert_tool_accepts(disks['disk'], tmp_path)


def test_flow_pre_live_migration(hosts, tmp_path):
    hosts.add_image('img', 'parallels')
    for conf in hosts.confs.values():
        conf.set_override('force_raw_images', False)
    instance = new_instance()
    a = hosts.backend('a')
    mapping = instance_mod.disk_mapping(instance)
    flows.spawn(a, None, instance, mapping)
    source = {r.name: r for r in a.records.list(instance.uuid)}
    # The destination is configured for another backend; records decide.
    hosts.confs['b'].set_override('images_type', 'qcow2', group='libvirt')
    b = hosts.backend('b')
    created = flows.pre_live_migration(b, None, instance, mapping,
                                       list(source.values()),
                                       source_host='a')
    assert sorted(created) == sorted(source)
    for name, rec in source.items():
        mine = b.records.get(instance.uuid, name)
        assert (mine.backend, mine.format, mine.virtual_size,
                mine.source_id, mine.provenance['ploop_format']) == (
            rec.backend, rec.format, rec.virtual_size, rec.source_id,
            rec.provenance['ploop_format'])
        disk = b.from_metadata(instance, name)
        assert_disk(disk, b, rec.provenance['ploop_format'],
                    rec.virtual_size)
        assert fileutils.allocated_bytes(disk.path) <= 2 * MiB  # empty
        assert_tool_accepts(disk, tmp_path)
    assert b.records.get(instance.uuid, 'disk').provenance[
        'ploop_format'] == 'expanded'


def test_flow_rescue_unrescue(hosts):
    hosts.add_image('img')
    hosts.add_image('rescue-img', pattern=0xcd)
    instance = new_instance(ephemeral_gb=0, swap=0)
    a = hosts.backend('a')
    flows.spawn(a, None, instance, instance_mod.disk_mapping(instance))
    root = a.from_metadata(instance, 'disk')
    before = fileutils.sha256_file(root.data_path)
    assert flows.rescue(a, None, instance, 'rescue-img') == ['disk.rescue']
    rescue = a.from_metadata(instance, 'disk.rescue')
    assert (rescue.image_type, rescue.virtual_size()) == ('ploop',
                                                          256 * MiB)
    out = run('qemu-io', '-r', '-f', 'raw', '-c', 'read -P 0xcd 0 1M',
              rescue.data_path)
    assert 'Pattern verification failed' not in out
    assert flows.unrescue(a, instance) == ['disk.rescue']
    assert not os.path.lexists(rescue.path)
    assert fileutils.sha256_file(root.data_path) == before


def test_flow_domain_xml(hosts):
    hosts.add_image('img')
    instance = new_instance()
    instance.config_drive = True
    a = hosts.backend('a')
    mapping = instance_mod.disk_mapping(instance)
    flows.spawn(a, None, instance, mapping)
    elements = [a.from_metadata(instance, n, info).libvirt_info(
        'none', {}).to_xml() for n, info in mapping.items()]
    back = define_and_read(elements, f'vm-{instance.uuid}')
    got = {d.find('target').get('dev'): (d.find('source').get('file'),
                                         d.find('driver').get('type'))
           for d in back}
    for name, info in mapping.items():
        rec = a.records.get(instance.uuid, name)
        assert got[info['dev']] == (rec.location, rec.format)
    assert got['vda'][1] == 'ploop' and got['sda'][1] == 'raw'  # config


def test_mixed_backends_on_one_host(hosts, tmp_path):
    """A Qcow2 instance keeps working after the host switches to ploop;
    new instances get ploop disks."""
    hosts.add_image('img')
    hosts.confs['a'].set_override('images_type', 'qcow2', group='libvirt')
    old = new_instance()
    a = hosts.backend('a')
    old_mapping = instance_mod.disk_mapping(old)
    flows.spawn(a, None, old, old_mapping)
    sums = {r.name: fileutils.sha256_file(r.location)
            for r in a.records.list(old.uuid)}

    hosts.confs['a'].set_override('images_type', 'ploop', group='libvirt')
    a = hosts.backend('a')
    # Spawning the old instance again creates (and overwrites) nothing.
    assert flows.spawn(a, None, old, old_mapping) == []
    for r in a.records.list(old.uuid):
        assert r.backend == 'qcow2'
        assert fileutils.sha256_file(r.location) == sums[r.name]
        disk = a.from_metadata(old, r.name, old_mapping[r.name])
        assert disk.libvirt_info('none', {}).driver_format == 'qcow2'

    new = new_instance()
    new_mapping = instance_mod.disk_mapping(new)
    flows.spawn(a, None, new, new_mapping)
    assert {r.backend for r in a.records.list(new.uuid)} == {'ploop'}

    # The old instance still migrates as what it is, to a ploop host.
    migration.migrate_disks(a, old, old_mapping, 'b', hosts.transport)
    old.flavor = instance_mod.Flavor(root_gb=2, ephemeral_gb=1, swap=64)
    b = hosts.backend('b')
    done = flows.finish_migration(b, None, old,
                                  instance_mod.disk_mapping(old),
                                  source_host='a')
    assert done['grown'] == ['disk']
    # Swap is not migrated but made afresh: a new disk, of the host's type.
    assert {r.name: r.backend for r in b.records.list(old.uuid)} == {
        'disk': 'qcow2', 'disk.local': 'qcow2', 'disk.swap': 'ploop'}
    assert qemu_info(b.records.get(old.uuid, 'disk').location,
                     'qcow2')['virtual-size'] == 2 * GiB
    # Deleting either instance deletes what each really is.
    assert sorted(flows.destroy_disks(a, old)) == sorted(old_mapping)
    assert sorted(flows.destroy_disks(a, new)) == sorted(new_mapping)
    for name in new_mapping:
        assert not os.path.lexists(os.path.join(hosts.paths['a'], new.uuid,
                                                name))


def test_flow_spawn_failure_leaves_nothing(hosts):
    hosts.add_image('img')
    hosts.confs['a'].set_override('virt_mkfs', ['default=false'])
    instance = new_instance()
    a = hosts.backend('a')
    with pytest.raises(exception.ProcessError):
        flows.spawn(a, None, instance, instance_mod.disk_mapping(instance))
    assert a.records.list(instance.uuid) == []
    assert not os.path.exists(os.path.join(hosts.paths['a'], instance.uuid))


# -- the CLI --------------------------------------------------------------------

def test_cli_backend_ploop(tmp_path, capsys):
    state = str(tmp_path / 'state')

    def ib(*args):
        code = cli.main(['--state-dir', state, '--json'] + list(args))
        out = capsys.readouterr().out
        return code, json.loads(out) if out.strip() else None

    assert ib('image', 'create-sample', 'img', '--size', '64M')[0] == 0
    code, view = ib('spawn', '--image', 'img', '--name', 'vm', '--root-gb',
                    '1', '--swap-mb', '64', '--backend', 'ploop')
    assert code == 0
    disks = {d['name']: d for d in view['disks']}
    assert {d['backend'] for d in disks.values()} == {'ploop'}
    # allocated = what the directory's files take (du), not the disk size
    assert 0 < disks['disk']['allocated'] < 64 * MiB
    code, view = ib('resize', 'vm', '--root-gb', '2')
    assert code == 0 and view['changes']['grown'] == ['disk']
    code, view = ib('show', 'vm')
    assert {d['name']: d['virtual_size'] for d in view['disks']}[
        'disk'] == 2 * GiB
    shutil.rmtree(state)
