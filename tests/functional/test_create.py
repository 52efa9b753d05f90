"""Creating disks on Flat and Qcow2 with real qemu-img, real files."""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET

import pytest

import imagebackend
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import shim
from imagebackend import transport as transport_mod

from tests.functional.conftest import (GiB, MiB, Instance, blkid, guest_bytes,
                                       make_ephemeral, make_swap,
                                       overlay_commands, qemu_info, run)

SHA1_IMG = hashlib.sha1(b'img').hexdigest()


def _base(host, name=SHA1_IMG):
    return os.path.join(host.instances_path, '_base', name)


def _commands(recorded, *words):
    return [c for c in recorded if c[:len(words)] == words]


# -- Qcow2 -------------------------------------------------------------------

def test_qcow2_native_from_image(backend, instance, make_image, host,
                                 recorded, tmp_path, qcow2_overlay):
    src = make_image('img', 'qcow2', 64 * MiB)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    disk.create_from_image(None, 'img', 128 * MiB)

    info = qemu_info(disk.path)
    assert info['format'] == 'qcow2'
    assert info['virtual-size'] == 128 * MiB
    assert info['full-backing-filename'] == _base(host)
    assert info['backing-filename-format'] == 'raw'
    assert qemu_info(_base(host))['format'] == 'raw'  # force_raw_images
    data = guest_bytes(disk.path, 'qcow2', tmp_path)
    assert data[:64 * MiB] == guest_bytes(src, 'qcow2', tmp_path)
    assert data[64 * MiB:] == bytes(64 * MiB)

    record = backend.records.get(instance.uuid, 'disk')
    assert (record.state, record.backend, record.format,
            record.virtual_size) == ('created', 'qcow2', 'qcow2', 128 * MiB)
    assert (record.source_type, record.source_id) == ('image', 'img')
    assert (record.backing, record.backing_format) == (SHA1_IMG, 'raw')
    assert record.location == disk.path
    assert record.provenance['path'] == 'native'
    assert record.provenance['overlay'] == qcow2_overlay
    # Fetch converted the qcow2 image once; the disk is one create (or
    # none: written in-process); nothing the library made was ever
    # inspected with qemu-img info.
    assert [c[:2] for c in recorded] == [('qemu-img', 'convert')] + \
        overlay_commands(qcow2_overlay)


def test_qcow2_native_cached_base_is_one_command(backend, make_image,
                                                 recorded, qcow2_overlay):
    make_image('img', 'raw')
    backend.by_name(Instance(), 'disk', 'qcow2').create_from_image(
        None, 'img', GiB)
    recorded.clear()
    second = backend.by_name(Instance(), 'disk', 'qcow2')
    second.create_from_image(None, 'img', GiB)
    command = ('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
               second.image_cache.path(SHA1_IMG), second.path, str(GiB))
    assert recorded == ([] if qcow2_overlay == 'in-process' else [command])
    assert qemu_info(second.path)['full-backing-filename'] == \
        second.image_cache.path(SHA1_IMG)


def test_qcow2_native_from_func_caches_template(backend, host, recorded,
                                                qcow2_overlay):
    func = make_ephemeral('ephemeral0', 'ext4', 64 * MiB)
    first = backend.by_name(Instance(), 'disk.local', 'qcow2')
    first.create_from_func(None, func, 'ephemeral_64M_ext4', 64 * MiB)
    recorded.clear()
    second = backend.by_name(Instance(), 'disk.local', 'qcow2')
    second.create_from_func(None, func, 'ephemeral_64M_ext4', 64 * MiB)
    assert [c[:2] for c in recorded] == overlay_commands(qcow2_overlay)
    template = _base(host, 'ephemeral_64M_ext4')
    assert qemu_info(second.path)['full-backing-filename'] == template
    assert blkid(template)['TYPE'] == 'ext4'
    assert blkid(template)['LABEL'] == 'ephemeral0'
    record = backend.records.get(second.instance.uuid, 'disk.local')
    assert (record.source_type, record.source_id) == ('func',
                                                      'ephemeral_64M_ext4')
    assert record.backing == 'ephemeral_64M_ext4'


def test_qcow2_without_force_raw_keeps_qcow2_base(backend, host, instance,
                                                  make_image, recorded,
                                                  qcow2_overlay):
    host.set_override('force_raw_images', False)
    make_image('img', 'qcow2')
    disk = backend.by_name(instance, 'disk', 'qcow2')
    disk.create_from_image(None, 'img', 128 * MiB)
    assert qemu_info(_base(host))['format'] == 'qcow2'
    assert qemu_info(disk.path)['backing-filename-format'] == 'qcow2'
    assert backend.records.get(instance.uuid, 'disk').backing_format == \
        'qcow2'
    assert [c[:2] for c in recorded] == overlay_commands(qcow2_overlay)


def test_qcow2_preallocation_stays_with_qemu_img(backend, host, instance,
                                                 make_image, recorded):
    """The writer covers no preallocation: qemu-img makes the overlay,
    and the record says so."""
    host.set_override('preallocate_images', 'space')
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', 'qcow2')
    disk.create_from_image(None, 'img', 128 * MiB)
    record = backend.records.get(instance.uuid, 'disk')
    assert record.provenance['overlay'] == 'qemu-img'
    assert ('qemu-img', 'create') in [c[:2] for c in recorded]
    run('qemu-img', 'check', '-f', 'qcow2', disk.path)


# -- Flat ----------------------------------------------------------------------

def test_flat_native_from_raw_image_runs_no_command(backend, instance,
                                                    make_image, host,
                                                    recorded, tmp_path):
    src = make_image('img', 'raw', 64 * MiB)
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', 128 * MiB)
    info = qemu_info(disk.path, 'raw')
    assert info['virtual-size'] == 128 * MiB
    assert 'backing-filename' not in info
    with open(disk.path, 'rb') as f, open(src, 'rb') as g:
        assert f.read(64 * MiB) == g.read()
    assert recorded == []  # fetch, copy and grow are all in-process
    # The base and the disk stay sparse: only the written data is allocated.
    assert fileutils.allocated_bytes(_base(host)) < 4 * MiB
    assert fileutils.allocated_bytes(disk.path) < 4 * MiB
    record = backend.records.get(instance.uuid, 'disk')
    assert (record.backend, record.format, record.virtual_size,
            record.backing) == ('flat', 'raw', 128 * MiB, None)
    assert record.provenance['copy'] in ('reflink', 'sparse')


def test_flat_native_from_func_writes_into_disk(backend, instance, host):
    disk = backend.by_name(instance, 'disk.swap', 'flat')
    disk.create_from_func(None, make_swap(32 * MiB), 'swap_32', 32 * MiB)
    assert blkid(disk.path)['TYPE'] == 'swap'
    assert not os.path.exists(_base(host, 'swap_32'))  # no template kept
    record = backend.records.get(instance.uuid, 'disk.swap')
    assert (record.source_type, record.source_id, record.virtual_size) == (
        'func', 'swap_32', 32 * MiB)


def test_flat_without_force_raw_records_qcow2(backend, host, instance,
                                              make_image):
    host.set_override('force_raw_images', False)
    make_image('img', 'qcow2')
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', 128 * MiB)
    assert qemu_info(disk.path, 'qcow2')['virtual-size'] == 128 * MiB
    assert backend.records.get(instance.uuid, 'disk').format == 'qcow2'
    reopened = backend.from_metadata(instance, 'disk')
    assert reopened.driver_format == 'qcow2'


def test_flat_preallocate_space(backend, host, instance, make_image):
    host.set_override('preallocate_images', 'space')
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', 128 * MiB)
    assert disk.driver_io == 'native'
    assert fileutils.allocated_bytes(disk.path) >= 128 * MiB


def test_fallocate_support_is_probed_once_per_class(backend, host, instance,
                                                    make_image, monkeypatch):
    # Nova's rule: one 1-byte probe beside the first disk tells whether this
    # filesystem can fallocate; later disks of the class reuse the answer.
    from imagebackend import processes
    from imagebackend.backends import flat
    monkeypatch.delattr(flat.Flat, 'can_fallocate', raising=False)
    host.set_override('preallocate_images', 'space')
    make_image('img', 'raw')
    with processes.recording() as commands:
        for name in ('disk', 'disk.local'):
            disk = backend.by_name(instance, name, 'flat')
            disk.create_from_image(None, 'img', 64 * MiB)
            assert fileutils.allocated_bytes(disk.path) >= 64 * MiB
    probes = [c for c in commands if c[:3] == ('fallocate', '-l', '1')]
    assert len(probes) == 1
    assert not os.path.exists(probes[0][3])
    assert flat.Flat.can_fallocate is True
    assert len([c for c in commands if c[:2] == ('fallocate', '-n')]) == 2


# -- common behaviour, both backends -----------------------------------------

@pytest.fixture(params=['flat', 'qcow2'])
def image_type(request):
    return request.param


def test_resize_grows_and_refuses_shrink(backend, instance, make_image,
                                         image_type, recorded):
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', image_type)
    disk.create_from_image(None, 'img', 128 * MiB)
    disk = backend.from_metadata(instance, 'disk')
    disk.resize_image(256 * MiB)
    assert qemu_info(disk.path, disk.driver_format)['virtual-size'] == \
        256 * MiB
    assert backend.records.get(instance.uuid, 'disk').virtual_size == \
        256 * MiB
    with pytest.raises(exception.CannotShrink):
        disk.resize_image(128 * MiB)
    assert qemu_info(disk.path, disk.driver_format)['virtual-size'] == \
        256 * MiB
    assert not [c for c in recorded if c[:2] == ('qemu-img', 'info')]


def test_check_backing_recreates_base_never_touches_disk(
        backend, host, instance, make_image, image_type):
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', image_type)
    disk.create_from_image(None, 'img', 128 * MiB)
    eph = backend.by_name(instance, 'disk.local', image_type)
    func = make_ephemeral('ephemeral0', 'ext4', 64 * MiB)
    eph.create_from_func(None, func, 'ephemeral_64M_ext4', 64 * MiB)
    before = {p: (os.stat(p).st_mtime_ns, fileutils.sha256_file(p))
              for p in (disk.path, eph.path)}
    for name in (SHA1_IMG, 'ephemeral_64M_ext4'):
        fileutils.remove_path(_base(host, name))
        fileutils.remove_path(_base(host, name) + '.meta.json')

    disk = backend.from_metadata(instance, 'disk')
    disk.check_backing_from_image(None, 'img')
    eph = backend.from_metadata(instance, 'disk.local')
    eph.check_backing_from_func(None, func, 'ephemeral_64M_ext4')

    after = {p: (os.stat(p).st_mtime_ns, fileutils.sha256_file(p))
             for p in (disk.path, eph.path)}
    assert after == before
    needs_base = disk.capabilities.backing_in_cache
    assert os.path.exists(_base(host)) == needs_base
    assert os.path.exists(_base(host, 'ephemeral_64M_ext4')) == needs_base
    if needs_base:
        run('qemu-img', 'check', '-f', 'qcow2', disk.path)


def test_check_backing_of_missing_disk(backend, instance, image_type,
                                       make_image):
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.DiskNotFound):
        disk.check_backing_from_image(None, 'img')


def test_fallback_side_loads_image_gone_upstream(tmp_path, host, instance,
                                                 make_image, image_type):
    # Host "src" has the image cached; it is then deleted upstream.
    src_path = make_image('img', 'raw')
    src_backend = imagebackend.Backend(conf=host)
    src_backend.by_name(Instance(), 'disk', 'qcow2').create_from_image(
        None, 'img', GiB)
    os.unlink(src_path)

    from oslo_config import cfg
    dest_conf = cfg.ConfigOpts()
    imagebackend.config.register_opts(dest_conf)
    dest_conf.set_override('instances_path', str(tmp_path / 'dest'))
    dest_conf.set_override('images_dir', host.imagebackend.images_dir,
                           group='imagebackend')
    dest_conf([])
    transport = transport_mod.LocalTransport({'src': host.instances_path})
    dest = imagebackend.Backend(conf=dest_conf, transport=transport)
    disk = dest.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.ImageNotFound):
        disk.create_from_image(None, 'img', GiB)
    disk.create_from_image(None, 'img', GiB, fallback='src')
    entry = dest.image_cache.get(SHA1_IMG)
    assert entry.provenance == 'side-loaded'
    assert entry.sha256 == src_backend.image_cache.get(SHA1_IMG).sha256


def test_legacy_cache_call_creates_disk_and_record(backend, instance,
                                                   make_image, image_type):
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', image_type)
    fetches = []

    def fetch_image(target, context, image_id, **kwargs):
        fetches.append(target)
        disk.image_cache.fetch_into(context, image_id, target)

    # Exactly as Nova's driver calls it.
    disk.cache(fetch_func=fetch_image, context=None, filename=SHA1_IMG,
               image_id='img', size=128 * MiB)
    disk.cache(fetch_func=fetch_image, context=None, filename=SHA1_IMG,
               image_id='img', size=128 * MiB)
    assert len(fetches) == 1
    record = backend.records.get(instance.uuid, 'disk')
    assert record.provenance['path'] == 'legacy-cache'
    assert (record.state, record.virtual_size) == ('created', 128 * MiB)


def test_snapshot_extract(backend, instance, make_image, image_type,
                          tmp_path):
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', image_type)
    disk.create_from_image(None, 'img')
    target = str(tmp_path / 'snap.qcow2')
    disk.snapshot_extract(target, 'qcow2')
    assert qemu_info(target)['format'] == 'qcow2'
    assert guest_bytes(target, 'qcow2', tmp_path) == guest_bytes(
        disk.path, disk.driver_format, tmp_path)


def test_libvirt_info_renders_disk(backend, instance, make_image,
                                   image_type):
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', image_type, disk_info_mapping={
        'bus': 'virtio', 'dev': 'vda', 'type': 'disk'})
    disk.create_from_image(None, 'img')
    xml = ET.fromstring(disk.libvirt_info('none', {}, boot_order=1).to_xml())
    assert xml.get('type') == 'file'
    assert xml.find('driver').get('type') == {'flat': 'raw',
                                              'qcow2': 'qcow2'}[image_type]
    assert xml.find('source').get('file') == disk.path
    assert xml.find('target').get('dev') == 'vda'
    assert xml.find('boot').get('order') == '1'
    fs = disk.libvirt_fs_info('/')
    assert fs.source_file == disk.path


def test_shim_path_records_shim(backend, instance, make_image, image_type):
    make_image('img', 'raw')
    disk = backend.by_name(instance, 'disk', image_type)
    shim.create_from_image(disk, None, 'img', 128 * MiB)
    record = backend.records.get(instance.uuid, 'disk')
    assert record.provenance['path'] == 'shim'
    assert (record.state, record.virtual_size) == ('created', 128 * MiB)
