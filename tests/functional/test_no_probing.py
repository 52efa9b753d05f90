"""The legacy path never lets qemu-img probe a format (issue 9, point 10),
and asks qemu-img nothing about what the library made (issue 12, point 1).

A base Nova's own fetch function left in ``_base`` has no sidecar; the
legacy ``cache()`` path describes it once from its bytes (format_inspector,
safety-checked, and its digest: a sidecar), so neither that disk nor a
later one made on it runs ``qemu-img info``: the base's format and size
come from the sidecar, the disk's from what the backend made.
"""

from __future__ import annotations

import pytest

from imagebackend import exception
from imagebackend import names
from imagebackend import processes
from imagebackend import qemu

from tests import hosts
from tests.functional.conftest import MiB, run

BACKENDS = ('flat', 'qcow2')
NAME = names.image_cache_name('img')


@pytest.mark.parametrize('image_type', BACKENDS)
@pytest.mark.parametrize('fmt', ('raw', 'qcow2'))
def test_legacy_cache_runs_no_qemu_img_info_without_format(
        backend, instance, tmp_path, image_type, fmt):
    # Nova's driver calling cache() with its own fetch function, which
    # leaves a base without a sidecar (a Nova-era base).
    src = str(tmp_path / f'src.{fmt}')
    run('qemu-img', 'create', '-q', '-f', fmt, src, str(32 * MiB))
    run('qemu-io', '-f', fmt, '-c', 'write -P 0xab 0 1M', src)

    def fetch_image(target, context=None, image_id=None, **kwargs):
        run('cp', '--sparse=always', src, target)

    disk = backend.by_name(instance, 'disk', image_type)
    with processes.recording() as commands:
        disk.cache(fetch_func=fetch_image, context=None, filename=NAME,
                   image_id='img', size=64 * MiB)
    # The base is described from its bytes, in-process (format_inspector,
    # safety-checked): its format and size are never asked of qemu-img,
    # let alone by probing.
    assert [c for c in commands if c[:2] == ('qemu-img', 'info')] == []
    record = backend.records.get(instance.uuid, 'disk')
    assert (record.state, record.virtual_size) == ('created', 64 * MiB)


def test_qemu_info_refuses_to_run_without_a_format(tmp_path):
    path = str(tmp_path / 'x.raw')
    run('qemu-img', 'create', '-q', '-f', 'raw', path, str(MiB))
    with processes.recording() as commands:
        for fmt in (None, ''):
            with pytest.raises(ValueError):
                qemu.info(path, fmt)
            with pytest.raises(ValueError):
                qemu.virtual_size(path, fmt)
    assert commands == []
    assert qemu.virtual_size(path, 'raw') == MiB


def test_hostile_sidecarless_base_is_refused_not_probed(backend, instance,
                                                        tmp_path):
    # A base with no sidecar that is a qcow2 naming a host file as its
    # backing file: refused by inspection, never handed to qemu-img.
    src = str(tmp_path / 'evil.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
        '/etc/passwd', src, str(32 * MiB))

    def fetch_image(target, context=None, image_id=None, **kwargs):
        run('cp', src, target)

    disk = backend.by_name(instance, 'disk', 'flat')
    with processes.recording() as commands:
        with pytest.raises(exception.ImageUnacceptable):
            disk.cache(fetch_func=fetch_image, context=None, filename=NAME,
                       image_id='img', size=64 * MiB)
    assert [c for c in commands if c[:2] == ('qemu-img', 'info')] == []


def _nova_ephemeral(target, ephemeral_size=None, **kwargs):
    # What Nova's _create_ephemeral writes: a raw file with a filesystem.
    run('truncate', '-s', f'{ephemeral_size}G', target)
    run('mkfs', '-t', 'ext4', '-F', '-q', target)


@pytest.mark.parametrize('image_type', BACKENDS)
def test_legacy_cache_on_cached_bases_runs_no_qemu_img_info(
        backend, tmp_path, image_type):
    """As Nova's driver makes a second instance's root (grown) and
    ephemeral disks: no qemu-img info, and the records say what qemu-img
    would."""
    src = str(tmp_path / 'src.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', src, str(32 * MiB))
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M', src)

    def fetch_image(target, context=None, image_id=None, **kwargs):
        run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', src, target)

    def spawn(instance):
        backend.by_name(instance, 'disk', image_type).cache(
            fetch_func=fetch_image, context=None, filename=NAME,
            image_id='img', size=64 * MiB)
        backend.by_name(instance, 'disk.local', image_type).cache(
            fetch_func=_nova_ephemeral, context=None,
            filename='ephemeral_1_ext4', size=1024 * MiB, ephemeral_size=1,
            safe=True)

    spawn(hosts.Instance())     # the bases are made and described
    second = hosts.Instance()
    with processes.recording() as commands:
        spawn(second)
    assert [c for c in commands if c[:2] == ('qemu-img', 'info')] == []
    for name, size in (('disk', 64 * MiB), ('disk.local', 1024 * MiB)):
        record = backend.records.get(second.uuid, name)
        assert (record.state, record.virtual_size) == ('created', size)
        disk = backend.by_name(second, name)
        assert qemu.virtual_size(disk.path, record.format) == size
