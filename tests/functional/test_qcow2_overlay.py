"""The in-process qcow2 overlay writer against the real qemu-img / qemu-io.

Proof, not trust: the writer's file is compared byte for byte (and by
allocation, and field for field of ``qemu-img info``) with what
``qemu-img create`` writes for the same request, over a generated set of
virtual sizes, base formats and backing name lengths; and used through
qemu: ``qemu-img check``, ``qemu-img compare`` with the base, writes and
reads through ``qemu-io``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess

import pytest

from imagebackend import exception
from imagebackend import qcow2_overlay

from tests.functional.conftest import GiB, MiB, run

KiB = 1024
TiB = 1024 * GiB
L2 = qcow2_overlay.L2_COVERAGE            # 512 MiB per L1 entry
L1_CLUSTER = L2 * (qcow2_overlay.CLUSTER_SIZE // 8)   # 4 TiB per L1 cluster


def _sizes() -> list[int]:
    """Boundaries (sector, cluster, L2 table, L1 cluster), the issue's
    1 byte .. 64 TiB and the format's limit, and seeded odd sizes."""
    edges = [1, 511, 512, 513, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1,
             L2 - 1, L2, L2 + 1, GiB + 7, 10 * GiB,
             L1_CLUSTER - 512, L1_CLUSTER, L1_CLUSTER + 1, 64 * TiB,
             qcow2_overlay.MAX_VIRTUAL_SIZE]
    rng = random.Random(12)
    odd = [rng.randrange(1, 64 * TiB) | 1 for _ in range(8)]
    return edges + odd


SIZES = _sizes()
# Backing names: relative, short absolute, then padded to these lengths.
NAME_LENGTHS = ['relative', 'short', 255, 700, 1023]


def _cases():
    """Every size, each with one base format and name length in turn
    (a few dozen qemu-img runs, not the cross product)."""
    for i, size in enumerate(SIZES):
        yield pytest.param(size, ('raw', 'qcow2')[i % 2],
                           NAME_LENGTHS[i % len(NAME_LENGTHS)],
                           id=f'{size}-{("raw", "qcow2")[i % 2]}-'
                              f'{NAME_LENGTHS[i % len(NAME_LENGTHS)]}')


@pytest.fixture(scope='module')
def bases(tmp_path_factory):
    """A raw and a qcow2 base with data, in a directory of their own."""
    d = tmp_path_factory.mktemp('bases')
    raw = d / 'base.raw'
    with open(raw, 'wb') as f:
        f.write(b'\x5a' * MiB + b'\x3c' * MiB)
        f.truncate(4 * MiB)
    run('qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', str(raw),
        str(d / 'base.qcow2'))
    return d


def _backing(bases, fmt: str, length) -> str:
    """A name of the base of ``fmt``: relative to the overlay's directory
    (the bases' own), short absolute, or absolute of exactly ``length``
    bytes (a symlink reached through nested directories)."""
    target = str(bases / f'base.{fmt}')
    if length == 'relative':
        return f'base.{fmt}'
    if length == 'short':
        return target
    d = str(bases / f'long-{fmt}-{length}')
    while len(d) + 200 + 10 < length:
        d = os.path.join(d, 'd' * 200)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, 'b' * (length - len(d) - 1))
    assert len(path) == length
    if not os.path.lexists(path):
        os.symlink(target, path)
    return path


def _qemu_img_create(path, size, backing, fmt):
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', fmt, '-b', backing,
        path, str(size))


def _info(path) -> dict:
    info = json.loads(run('qemu-img', 'info', '--output=json', '-f', 'qcow2',
                          path))
    del info['filename']
    return info


@pytest.mark.parametrize('size,fmt,length', list(_cases()))
def test_byte_identical_to_qemu_img(bases, size, fmt, length):
    backing = _backing(bases, fmt, length)
    theirs, ours = str(bases / 'theirs.qcow2'), str(bases / 'ours.qcow2')
    try:
        _qemu_img_create(theirs, size, backing, fmt)
        qcow2_overlay.write(ours, size, backing, fmt)
        with open(theirs, 'rb') as a, open(ours, 'rb') as b:
            assert a.read() == b.read()
        # Same allocation too (so qemu-img info's actual-size is equal).
        assert os.stat(ours).st_blocks == os.stat(theirs).st_blocks
        assert os.stat(ours).st_mode == os.stat(theirs).st_mode
        if length in ('relative', 1023) or size == 10 * GiB:
            assert _info(ours) == _info(theirs)
    finally:
        for p in (theirs, ours):
            if os.path.exists(p):
                os.unlink(p)


@pytest.fixture(params=['raw', 'qcow2'])
def overlay(request, bases, tmp_path):
    """An overlay the writer made on a 4 MiB base, grown to 8 MiB."""
    fmt = request.param
    path = str(tmp_path / 'disk')
    base = str(bases / f'base.{fmt}')
    qcow2_overlay.write(path, 8 * MiB, base, fmt)
    return path, base, fmt


def test_check_clean(overlay):
    path, _base, _fmt = overlay
    report = json.loads(run('qemu-img', 'check', '--output=json', '-f',
                            'qcow2', path))
    assert report['check-errors'] == 0
    assert not report.get('corruptions') and not report.get('leaks')


def test_guest_bytes_are_the_base(overlay):
    path, base, fmt = overlay
    # Non-strict compare (exit 0 only if identical): the 4 MiB past the
    # base must read as zeros; qemu-img warns that the sizes differ.
    out = run('qemu-img', 'compare', '-f', 'qcow2', '-F', fmt, path, base)
    assert out.splitlines() == ['Warning: Image size mismatch!',
                                'Images are identical.']


def _io(path, *commands) -> str:
    args = ['qemu-io', '-f', 'qcow2']
    for c in commands:
        args += ['-c', c]
    done = subprocess.run(args + [path], capture_output=True, text=True)
    assert done.returncode == 0 and 'Pattern verification failed' not in \
        done.stdout + done.stderr, done.stdout + done.stderr
    return done.stdout


def test_writes_land_in_the_overlay(overlay):
    path, base, fmt = overlay
    before = hashlib.sha256(open(base, 'rb').read()).hexdigest()
    _io(path, 'write -P 0xab 1536k 64k', 'write -P 0xcd 7m 4k')
    # What was written, and around it the base (0x5a, 0x3c, then zeros)
    # and the zeros past it, also within the clusters written.
    _io(path, 'read -P 0xab 1536k 64k', 'read -P 0xcd 7m 4k',
        'read -P 0x5a 0 1m', 'read -P 0x3c 1m 512k',
        'read -P 0x3c 1600k 448k', 'read -P 0 2m 5m',
        'read -P 0 7172k 1020k')
    # The written clusters, and only they, are the overlay's own data.
    mapped = json.loads(run('qemu-img', 'map', '--output=json', '-f',
                            'qcow2', path))
    assert [(m['start'], m['length']) for m in mapped
            if m['depth'] == 0 and m['data']] == [(1536 * KiB, 64 * KiB),
                                                  (7 * MiB, 64 * KiB)]
    assert hashlib.sha256(open(base, 'rb').read()).hexdigest() == before
    report = json.loads(run('qemu-img', 'check', '--output=json', '-f',
                            'qcow2', path))
    assert report['check-errors'] == 0 and not report.get('leaks')


@pytest.mark.parametrize('size,backing,fmt', [
    (0, 'base.raw', 'raw'),
    (-1, 'base.raw', 'raw'),
    (qcow2_overlay.MAX_VIRTUAL_SIZE + 1, 'base.raw', 'raw'),
    (True, 'base.raw', 'raw'),
    (1.5, 'base.raw', 'raw'),
    (MiB, 'x' * 1024, 'raw'),
    (MiB, '', 'raw'),
    (MiB, 'base\0.raw', 'raw'),
    (MiB, 'base.raw', 'vmdk'),
    (MiB, 'base.raw', 'raw\0'),
    (MiB, 'missing.raw', 'raw'),
], ids=['zero', 'negative', 'over-limit', 'bool', 'float', 'name-1024',
        'name-empty', 'name-nul', 'format-other', 'format-nul', 'missing'])
def test_out_of_range_is_typed_and_leaves_nothing(bases, tmp_path, size,
                                                  backing, fmt):
    d = tmp_path / 'd'
    d.mkdir()
    os.symlink(bases / 'base.raw', d / 'base.raw')
    with pytest.raises(exception.InvalidOverlay):
        qcow2_overlay.write(str(d / 'disk'), size, backing, fmt)
    assert sorted(os.listdir(d)) == ['base.raw']
    assert not qcow2_overlay.covers(size, backing, fmt) or \
        backing == 'missing.raw'


def test_qemu_img_refuses_what_the_writer_refuses(bases, tmp_path):
    """The limits are qemu's own: one past each, qemu-img fails too."""
    base = _backing(bases, 'raw', 1024 - 1)
    long_name = base + 'x'
    os.symlink(base, long_name)
    for size, backing in ((qcow2_overlay.MAX_VIRTUAL_SIZE + 1, base),
                          (MiB, long_name)):
        with pytest.raises(subprocess.CalledProcessError):
            _qemu_img_create(str(tmp_path / 'q'), size, backing, 'raw')
        assert not os.path.exists(tmp_path / 'q')


def test_replaces_like_qemu_img(bases, tmp_path):
    path = tmp_path / 'disk'
    path.write_bytes(b'old' * 100000)
    qcow2_overlay.write(str(path), GiB, str(bases / 'base.raw'), 'raw')
    assert _info(str(path))['virtual-size'] == GiB
    assert os.listdir(tmp_path) == ['disk']
