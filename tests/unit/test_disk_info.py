"""Tests for imagebackend.disk_info: Nova's disk.info, read and written."""

import json
import os
import subprocess
import sys
import textwrap
from unittest import mock

import pytest

from imagebackend import disk_info
from imagebackend import exception


@pytest.fixture
def inst_dir(tmp_path):
    d = tmp_path / 'instances' / 'uuid'
    d.mkdir(parents=True)
    return d


@pytest.fixture
def lock_path(tmp_path):
    return str(tmp_path / 'instances' / 'locks')


def nova_reads(info_path) -> dict:
    """What Nova's resolve_driver_format makes of the file."""
    with open(info_path) as f:
        line = f.read().rstrip()
    return json.loads(line) if line else {}


def test_path_for_is_beside_the_disk(inst_dir):
    assert disk_info.path_for(str(inst_dir / 'disk')) == str(
        inst_dir / 'disk.info')


def test_missing_file_lists_nothing(inst_dir):
    assert disk_info.read(str(inst_dir / 'disk.info')) == {}
    assert disk_info.format_of(str(inst_dir / 'disk')) is None


@pytest.mark.parametrize('content', [
    # Nova's module: one line and a newline; Nova's driver
    # (pre_live_migration): no newline.
    '{"%(d)s/disk": "qcow2", "%(d)s/disk.local": "raw"}\n',
    '{"%(d)s/disk": "qcow2", "%(d)s/disk.local": "raw"}',
])
def test_reads_what_nova_writes(inst_dir, content):
    (inst_dir / 'disk.info').write_text(content % {'d': inst_dir})
    assert disk_info.format_of(str(inst_dir / 'disk')) == 'qcow2'
    assert disk_info.format_of(str(inst_dir / 'disk.local')) == 'raw'
    assert disk_info.format_of(str(inst_dir / 'disk.swap')) is None


@pytest.mark.parametrize('content', [
    b'not json {', b'', b'  \n', b'["raw"]', b'"raw"', b'null',
    b'{"/x/disk": 7}', b'{"/x/disk": ""}', b'\xff\xfe{}'])
def test_garbled_file_is_corrupt_record(inst_dir, lock_path, content):
    info = inst_dir / 'disk.info'
    info.write_bytes(content)
    with pytest.raises(exception.CorruptRecord) as e:
        disk_info.read(str(info))
    assert str(info) in str(e.value)
    # A write refuses too, and leaves the file for a human to look at.
    with pytest.raises(exception.CorruptRecord):
        disk_info.set_format(str(inst_dir / 'disk'), 'raw', lock_path)
    with pytest.raises(exception.CorruptRecord):
        disk_info.remove(str(inst_dir / 'disk'), lock_path)
    assert info.read_bytes() == content
    assert sorted(os.listdir(inst_dir)) == ['disk.info']


def test_set_format_writes_novas_form(inst_dir, lock_path):
    disk = str(inst_dir / 'disk')
    assert disk_info.set_format(disk, 'qcow2', lock_path)
    info = inst_dir / 'disk.info'
    text = info.read_text()
    assert text.endswith('}\n') and text.count('\n') == 1
    assert nova_reads(info) == {disk: 'qcow2'}
    assert os.stat(info).st_mode & 0o777 == 0o644
    assert sorted(os.listdir(inst_dir)) == ['disk.info']  # no temp left


def test_set_format_keeps_other_entries_and_overwrites_own(inst_dir,
                                                           lock_path):
    info = inst_dir / 'disk.info'
    other = str(inst_dir / 'disk.local')
    info.write_text(json.dumps({other: 'raw'}) + '\n')
    disk = str(inst_dir / 'disk')
    disk_info.set_format(disk, 'raw', lock_path)
    disk_info.set_format(disk, 'qcow2', lock_path)
    assert nova_reads(info) == {other: 'raw', disk: 'qcow2'}


def test_unchanged_entry_is_not_rewritten(inst_dir, lock_path):
    disk = str(inst_dir / 'disk')
    disk_info.set_format(disk, 'raw', lock_path)
    before = os.stat(inst_dir / 'disk.info')
    assert not disk_info.set_format(disk, 'raw', lock_path)
    after = os.stat(inst_dir / 'disk.info')
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino,
                                                   after.st_mtime_ns)


def test_replaces_drops_the_old_path(inst_dir, lock_path):
    old = '/elsewhere/instances/uuid/disk'
    (inst_dir / 'disk.info').write_text(json.dumps({old: 'qcow2'}))
    disk = str(inst_dir / 'disk')
    disk_info.set_format(disk, 'qcow2', lock_path, replaces=[old])
    assert nova_reads(inst_dir / 'disk.info') == {disk: 'qcow2'}


def test_remove(inst_dir, lock_path):
    disk, local = str(inst_dir / 'disk'), str(inst_dir / 'disk.local')
    disk_info.set_format(disk, 'raw', lock_path)
    disk_info.set_format(local, 'raw', lock_path)
    assert disk_info.remove(local, lock_path)
    assert nova_reads(inst_dir / 'disk.info') == {disk: 'raw'}
    assert not disk_info.remove(local, lock_path)
    # The last entry gone, the file goes: Nova reads a missing file as
    # an empty one.
    assert disk_info.remove(disk, lock_path)
    assert os.listdir(inst_dir) == []


def test_remove_makes_no_file(inst_dir, lock_path):
    assert not disk_info.remove(str(inst_dir / 'disk'), lock_path)
    assert os.listdir(inst_dir) == []


def test_failed_write_leaves_the_file_as_it_was(inst_dir, lock_path):
    info = inst_dir / 'disk.info'
    info.write_text('{"/x/disk": "raw"}\n')
    with mock.patch('os.rename', side_effect=OSError(5, 'EIO')):
        with pytest.raises(OSError):
            disk_info.set_format(str(inst_dir / 'disk'), 'qcow2', lock_path)
    assert info.read_text() == '{"/x/disk": "raw"}\n'
    assert sorted(os.listdir(inst_dir)) == ['disk.info']


def test_write_is_durable(inst_dir, lock_path):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f'/proc/self/fd/{fd}'))
        real_fsync(fd)
    with mock.patch('os.fsync', side_effect=fsync):
        disk_info.set_format(str(inst_dir / 'disk'), 'raw', lock_path)
    # The temporary file's data, then the directory holding the rename.
    assert synced[-1] == str(inst_dir)
    assert any(p.startswith(str(inst_dir / '.disk.info.')) for p in synced)


WRITER = textwrap.dedent('''
    import sys
    from imagebackend import disk_info
    inst_dir, lock_path, who = sys.argv[1:4]
    for i in range(20):
        disk_info.set_format(f'{inst_dir}/disk.{who}.{i}', 'raw', lock_path)
        if i % 3 == 0:
            disk_info.remove(f'{inst_dir}/disk.{who}.{i}', lock_path)
''')


def test_concurrent_writers_lose_nothing(inst_dir, lock_path, repo_root):
    # Real processes (no instance lock held, as legacy callers): each
    # read-modify-write is under the library's own lock.
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    procs = [subprocess.Popen([sys.executable, '-c', WRITER, str(inst_dir),
                               lock_path, str(who)], env=env)
             for who in range(4)]
    assert [p.wait() for p in procs] == [0] * 4
    expected = {f'{inst_dir}/disk.{who}.{i}': 'raw'
                for who in range(4) for i in range(20) if i % 3}
    assert nova_reads(inst_dir / 'disk.info') == expected
    assert sorted(os.listdir(inst_dir)) == ['disk.info']
