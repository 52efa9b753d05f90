"""Fixtures for functional tests: real qemu-img, real files, a fresh host.

Each test gets its own instances_path and image folder under tmp_path, a
Backend on them, and helpers that make real images with qemu-img/qemu-io.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid as uuid_mod

import pytest

from imagebackend import processes
from tests.hosts import GiB, Instance, MiB  # noqa: F401 (re-exported)
# The Ceph cluster fixture (ceph_cluster) is registered once, in
# tests/conftest.py.


def pytest_collection_modifyitems(config, items):
    """Everything under tests/functional uses real tools: mark it so."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.functional)


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True,
                          text=True).stdout


def host_site(root, force_raw: bool, images_type: str,
              libvirt: str = ''):
    """``root`` laid out as a host: instances/, images/ (the image
    source) and the nova.conf naming them; ``libvirt``: more lines of its
    [libvirt] section. Returns ``root``."""
    inst = root / 'instances'
    images = root / 'images'
    inst.mkdir()
    images.mkdir()
    (root / 'nova.conf').write_text(
        f'[DEFAULT]\ninstances_path = {inst}\n'
        f'force_raw_images = {str(force_raw).lower()}\n'
        f'[libvirt]\nimages_type = {images_type}\n{libvirt}'
        f'[imagebackend]\nimages_dir = {images}\n')
    return root


def host_cli(repo_root, conf, *args: str,
             expect=None) -> tuple[int, dict]:
    """The real CLI in host mode (``--config-file conf --json args``), in
    a subprocess: its exit status and parsed output. ``expect``: the exit
    statuses allowed (default: any)."""
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    done = subprocess.run(
        [str(repo_root / '.venv' / 'bin' / 'python'), '-m', 'driver.cli',
         '--config-file', str(conf), '--json', *args],
        capture_output=True, text=True, env=env, cwd=str(repo_root))
    if expect is not None:
        assert done.returncode in expect, done.stderr + done.stdout
    return done.returncode, json.loads(done.stdout)


def qemu_info(path: str, fmt: str | None = None) -> dict:
    cmd = ['qemu-img', 'info', '--output=json', '-U']
    if fmt:
        cmd += ['-f', fmt]
    return json.loads(run(*cmd, path))


def guest_bytes(path: str, fmt: str, tmp_path) -> bytes:
    """What the guest sees: the disk converted to raw, read back."""
    out = str(tmp_path / f'guest-{uuid_mod.uuid4().hex}.raw')
    run('qemu-img', 'convert', '-f', fmt, '-O', 'raw', path, out)
    with open(out, 'rb') as f:
        data = f.read()
    os.unlink(out)
    return data


def blkid(path: str) -> dict:
    out = run('blkid', '-p', '-o', 'export', path)
    return dict(line.split('=', 1) for line in out.splitlines() if '=' in line)


def define_and_read(elements: list[str], name: str) -> list:
    """Define a domain holding these ``<disk>`` elements on libvirt's
    in-process test driver, and return the ``<disk>`` elements libvirt
    reports back (the domain is undefined again)."""
    import libvirt
    from xml.etree import ElementTree as ET
    conn = libvirt.open('test:///default')
    try:
        dom = conn.defineXML(
            "<domain type='test'><name>%s</name><memory unit='MiB'>128"
            "</memory><vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
            "<devices>%s</devices></domain>" % (name, ''.join(elements)))
        back = ET.fromstring(dom.XMLDesc(0)).findall('./devices/disk')
        dom.undefine()
    finally:
        conn.close()
    return back


def tree(path) -> dict:
    """Every file under ``path`` with its size and mtime (before/after)."""
    found = {}
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(root, n)
            st = os.lstat(p)
            found[os.path.relpath(p, path)] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.fixture
def make_image(host):
    """make_image(image_id, fmt='qcow2', size=64 MiB, pattern=0xab) -> path.

    Writes ``pattern`` into the first MiB and 0x5a at 8 MiB, so contents
    are checkable and the rest stays sparse.
    """
    def make(image_id: str, fmt: str = 'qcow2', size: int = 64 * MiB,
             pattern: int = 0xab, declared: str | None = None) -> str:
        path = os.path.join(host.imagebackend.images_dir,
                            f'{image_id}.{declared or fmt}')
        run('qemu-img', 'create', '-q', '-f', fmt, path, str(size))
        run('qemu-io', '-f', fmt, '-c', f'write -P {pattern} 0 1M',
            '-c', f'write -P 0x5a {8 * MiB} 64k', path)
        return path
    return make


def make_ephemeral(label: str = 'ephemeral0', fs: str = 'ext4',
                   size: int = 64 * MiB):
    """A template function: a raw file with a filesystem, like Nova's."""
    def func(target: str) -> None:
        if not os.path.exists(target):
            processes.execute('truncate', '-s', str(size), target)
        if fs == 'vfat':
            processes.execute('mkfs', '-t', fs, '-n', label, target)
        else:
            processes.execute('mkfs', '-t', fs, '-F', '-q', '-L', label,
                              target)
    return func


def make_swap(size: int = 32 * MiB):
    def func(target: str) -> None:
        if not os.path.exists(target):
            processes.execute('truncate', '-s', str(size), target)
        processes.execute('mkswap', target)
    return func


@pytest.fixture
def recorded():
    """Commands run through the process runner during the test."""
    with processes.recording() as commands:
        yield commands


@pytest.fixture(params=['in-process', 'qemu-img'])
def qcow2_overlay(request, host):
    """Qcow2 overlays made both ways: by the in-process writer and, with
    ``[imagebackend] qcow2_overlay_writer`` off, by ``qemu-img create``.
    The value is the provenance ``overlay`` the disk's record says."""
    host.set_override('qcow2_overlay_writer', request.param == 'in-process',
                      group='imagebackend')
    return request.param


def overlay_commands(qcow2_overlay: str) -> list[tuple[str, str]]:
    """The commands (first two words) making one Qcow2 overlay."""
    return [] if qcow2_overlay == 'in-process' else [('qemu-img', 'create')]
