"""Running out of space on a real filesystem (issue 9, point 11).

Each test mounts a small ext4 filesystem on a loop device (run under
``flock /tmp/ib-heavy.lock``), fills it, and makes a disk there through the
API or the CLI: the error is :class:`exception.NoSpace` (never a bare
``OSError``), and nothing half-made is left: no partial disk, no record,
no ``.part`` file, no listed instance.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

import imagebackend
from imagebackend import exception

from tests.functional.conftest import run
from tests.hosts import GiB, Instance, MiB, make_conf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture
def small_fs(tmp_path):
    """A fresh 64 MiB ext4 (no blocks reserved for root) on a loop device."""
    img = tmp_path / 'fs.img'
    with open(img, 'wb') as f:
        f.truncate(64 * MiB)
    run('mkfs.ext4', '-q', '-F', '-m', '0', str(img))
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    run('mount', '-o', 'loop', str(img), str(mnt))  # autoclear loop
    try:
        yield str(mnt)
    finally:
        run('umount', str(mnt))


def fill(path: str, leave: int) -> None:
    """Allocate all but about ``leave`` bytes of the filesystem at
    ``path`` (``leave=0``: every last block)."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    fd = os.open(os.path.join(path, 'filler'), os.O_CREAT | os.O_WRONLY)
    try:
        # A little slack for the filler's own extent tree.
        if free > leave + 256 * 1024:
            os.posix_fallocate(fd, 0, free - leave - 256 * 1024)
    finally:
        os.close(fd)
    if leave:
        return
    with open(os.path.join(path, 'filler2'), 'wb', buffering=0) as f:
        try:
            while True:
                f.write(b'\xff' * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def make_image(images: str, image_id: str, fmt: str = 'qcow2') -> None:
    """A 64 MiB image with 4 MiB of data."""
    path = os.path.join(images, f'{image_id}.{fmt}')
    run('qemu-img', 'create', '-q', '-f', fmt, path, str(64 * MiB))
    run('qemu-io', '-f', fmt, '-c', 'write -P 0xab 0 4M', path)


def files(path: str) -> list[str]:
    """Every file and directory under ``path`` but the filler."""
    found = []
    for root, dirs, names in os.walk(path):
        for n in dirs + names:
            rel = os.path.relpath(os.path.join(root, n), path)
            if not rel.startswith(('filler', 'lost+found')):
                found.append(rel)
    return sorted(found)


@pytest.fixture
def host(small_fs, tmp_path):
    """A host whose instances_path is on the small filesystem (images are
    elsewhere)."""
    images = tmp_path / 'images'
    images.mkdir()
    inst = os.path.join(small_fs, 'instances')
    os.mkdir(inst)
    return make_conf(inst, str(images))


def _nothing_made(backend, instance, before: list[str]) -> None:
    path = backend.conf.instances_path
    assert backend.records.list(instance.uuid) == []
    assert not os.path.exists(os.path.join(path, instance.uuid))
    # No partial cache entry, sidecar or temporary file either (lock
    # files may appear: a lock was taken).
    assert [f for f in files(path) if not f.startswith('locks')] == \
        [f for f in before if not f.startswith('locks')]


@pytest.mark.parametrize('images_type', ['qcow2', 'flat'])
def test_fetch_into_a_full_cache_is_no_space(host, images_type):
    """The image does not fit in ``_base``: the download fails."""
    host.set_override('images_type', images_type, group='libvirt')
    make_image(host.imagebackend.images_dir, 'img')
    backend = imagebackend.Backend(conf=host)
    backend.image_cache.ensure_dirs()
    before = files(host.instances_path)
    fill(host.instances_path, MiB)
    instance = Instance()
    with pytest.raises(exception.NoSpace) as e:
        backend.by_name(instance, 'disk').create_from_image(None, 'img', GiB)
    assert 'No space left' in str(e.value)
    _nothing_made(backend, instance, before)


def test_flat_copy_onto_a_full_disk_is_no_space(host):
    """The base is cached; its copy into the disk does not fit."""
    host.set_override('images_type', 'flat', group='libvirt')
    make_image(host.imagebackend.images_dir, 'img')
    backend = imagebackend.Backend(conf=host)
    entry = backend.image_cache.fetch_image(None, 'img')
    before = files(host.instances_path)
    fill(host.instances_path, MiB)
    instance = Instance()
    with pytest.raises(exception.NoSpace) as e:
        backend.by_name(instance, 'disk').create_from_image(None, 'img', GiB)
    assert 'disk' in str(e.value)
    _nothing_made(backend, instance, before)
    # The cache entry is untouched.
    assert backend.image_cache.get(entry.name) == entry


def test_overlay_on_a_full_disk_is_no_space(host):
    """Every block taken: the record (an atomic write) or qemu-img's
    overlay, whichever writes first, fails typed."""
    make_image(host.imagebackend.images_dir, 'img')
    backend = imagebackend.Backend(conf=host)
    backend.image_cache.fetch_image(None, 'img')
    before = files(host.instances_path)
    instance = Instance()
    fill(host.instances_path, 0)
    with pytest.raises(exception.NoSpace) as e:
        backend.by_name(instance, 'disk').create_from_image(None, 'img', GiB)
    assert 'No space left' in str(e.value)
    _nothing_made(backend, instance, before)


def test_cli_spawn_on_a_full_state_dir(small_fs):
    state = os.path.join(small_fs, 'state')

    def ib(*args):
        out = subprocess.run(
            [sys.executable, '-m', 'driver.cli', '--state-dir', state,
             '--json', *args], capture_output=True, text=True, cwd=REPO,
            env=dict(os.environ, PYTHONPATH=REPO))
        return out.returncode, (json.loads(out.stdout)
                                if out.stdout.strip() else None)

    assert ib('image', 'create-sample', 'img', '--size', '64M')[0] == 0
    assert ib('list') == (0, [])
    assert ib('cache', 'list') == (0, [])  # the default host exists
    before = files(state)
    fill(small_fs, MiB)
    code, err = ib('spawn', '--image', 'img', '--name', 'vm')
    assert code == 2, err
    assert err['error'] in ('NoSpace', 'ProcessNoSpace'), err
    assert 'No space left' in err['message']
    assert ib('list') == (0, [])
    # Nothing but the (empty) cache and lock directories a fetch makes.
    made = {'hosts/host-a/instances/_base', 'hosts/host-a/instances/locks'}
    assert [f for f in files(state) if '/locks/' not in f and
            f not in made] == before
