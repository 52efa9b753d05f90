"""The legacy path never lets qemu-img probe a format (issue 9, point 10).

A base Nova's own fetch function left in ``_base`` has no sidecar; the
legacy ``cache()`` path reads its size (Nova's get_disk_size) with the
format its bytes show to format_inspector, passed as ``-f``.
"""

from __future__ import annotations

import pytest

from imagebackend import exception
from imagebackend import names
from imagebackend import processes
from imagebackend import qemu

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
    infos = [c for c in commands if c[:2] == ('qemu-img', 'info')]
    assert infos  # the base's size was read (Nova's get_disk_size) ...
    assert all('-f' in c for c in infos), infos   # ... never by probing
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
