"""Tests for imagebackend.fileutils on real files under tmp_path."""

import errno
import hashlib
import io
import json
import os
import subprocess
from unittest import mock

import pytest

from imagebackend import exception
from imagebackend import fileutils

MiB = 1024 * 1024


def full_sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(MiB), b''):
            digest.update(chunk)
    return digest.hexdigest()


def make_sparse(path, size, extents):
    """A file of apparent ``size`` with ``{offset: bytes}`` written."""
    with open(path, 'wb') as f:
        for offset, data in extents.items():
            f.seek(offset)
            f.write(data)
        f.truncate(size)
    return str(path)


def fs_type(path):
    """The filesystem type of ``path`` as the kernel names it (stat -f)."""
    return subprocess.run(['stat', '-f', '-c', '%T', str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


# -- atomic_write_json --------------------------------------------------------

def test_atomic_write_json_content(tmp_path):
    path = tmp_path / 'disk.info'
    data = {'b': [1, 2], 'a': {'x': None}, 'u': 'ünï'}
    fileutils.atomic_write_json(str(path), data)
    assert json.loads(path.read_text()) == data
    assert path.read_text().endswith('\n')


def test_atomic_write_json_mode_ignores_umask(tmp_path):
    path = tmp_path / 'f.json'
    old = os.umask(0o077)
    try:
        fileutils.atomic_write_json(str(path), {'a': 1})
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_atomic_write_json_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / 'f.json'
    fileutils.atomic_write_json(str(path), {'v': 1})
    fileutils.atomic_write_json(str(path), {'v': 2})
    assert json.loads(path.read_text()) == {'v': 2}
    assert os.listdir(tmp_path) == ['f.json']


def test_atomic_write_json_failure_keeps_old_file(tmp_path):
    path = tmp_path / 'f.json'
    fileutils.atomic_write_json(str(path), {'v': 1})
    before = path.read_bytes()
    # json.dump fails part-way: 'a' is written before object() is reached.
    with pytest.raises(TypeError):
        fileutils.atomic_write_json(str(path), {'a': 1, 'z': object()})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['f.json']


def test_atomic_write_json_failure_in_dump_mocked(tmp_path):
    path = tmp_path / 'f.json'
    fileutils.atomic_write_json(str(path), {'v': 1})
    before = path.read_bytes()
    with mock.patch.object(fileutils.json, 'dump',
                           side_effect=OSError(errno.ENOSPC, 'full')):
        # A full disk is a typed error, not a bare OSError (issue 9, 11).
        with pytest.raises(exception.NoSpace):
            fileutils.atomic_write_json(str(path), {'v': 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['f.json']


def test_atomic_write_json_failure_without_old_file(tmp_path):
    with pytest.raises(TypeError):
        fileutils.atomic_write_json(str(tmp_path / 'f.json'), {1j: 1})
    assert os.listdir(tmp_path) == []


# -- clone_or_sparse_copy -----------------------------------------------------

@pytest.fixture
def sparse_src(tmp_path):
    """1 MiB of data at offset 0 in a 100 MiB file (plus a little more)."""
    return make_sparse(tmp_path / 'src', 100 * MiB, {
        0: os.urandom(MiB),
        50 * MiB: b'\x5a' * 4096,
    })


def _check_copy(src, dst):
    s, d = os.stat(src), os.stat(dst)
    assert d.st_size == s.st_size == 100 * MiB
    assert full_sha256(dst) == full_sha256(src)
    # Holes stay holes: about what the source allocates, not 100 MiB.
    assert d.st_blocks * 512 < 4 * MiB
    assert d.st_blocks <= s.st_blocks + 2 * MiB // 512


def test_clone_or_sparse_copy_here(tmp_path, sparse_src):
    dst = str(tmp_path / 'dst')
    method = fileutils.clone_or_sparse_copy(sparse_src, dst)
    if fs_type(tmp_path).startswith('ext'):
        # ext4 has no reflinks: the extent-by-extent copy must be used.
        assert method == 'sparse'
    else:
        assert method in ('reflink', 'sparse')
    _check_copy(sparse_src, dst)


def test_sparse_copy_when_reflink_unsupported(tmp_path, sparse_src):
    # Whatever this filesystem is, force the fallback.
    dst = str(tmp_path / 'dst')
    with mock.patch.object(fileutils.fcntl, 'ioctl',
                           side_effect=OSError(errno.EOPNOTSUPP, 'no')):
        assert fileutils.clone_or_sparse_copy(sparse_src, dst) == 'sparse'
    _check_copy(sparse_src, dst)


def test_sparse_copy_hole_at_start_and_end(tmp_path):
    src = make_sparse(tmp_path / 'src', 20 * MiB,
                      {3 * MiB: b'abc' * 1000, 10 * MiB: b'\x01' * MiB})
    dst = str(tmp_path / 'dst')
    with mock.patch.object(fileutils.fcntl, 'ioctl',
                           side_effect=OSError(errno.EXDEV, 'xdev')):
        assert fileutils.clone_or_sparse_copy(src, dst) == 'sparse'
    assert os.path.getsize(dst) == 20 * MiB
    assert full_sha256(dst) == full_sha256(src)


def test_sparse_copy_of_empty_and_all_hole_files(tmp_path):
    for name, size in (('empty', 0), ('holes', 8 * MiB)):
        src = make_sparse(tmp_path / name, size, {})
        dst = str(tmp_path / (name + '.copy'))
        fileutils.clone_or_sparse_copy(src, dst)
        assert os.path.getsize(dst) == size
        assert full_sha256(dst) == full_sha256(src)
        assert os.stat(dst).st_blocks == 0


def test_clone_reports_reflink(tmp_path, sparse_src):
    dst = str(tmp_path / 'dst')
    with mock.patch.object(fileutils.fcntl, 'ioctl', return_value=0) as m:
        assert fileutils.clone_or_sparse_copy(sparse_src, dst) == 'reflink'
    assert m.call_args.args[1] == fileutils.FICLONE


def test_clone_other_errors_propagate(tmp_path, sparse_src):
    with mock.patch.object(fileutils.fcntl, 'ioctl',
                           side_effect=OSError(errno.EIO, 'io')):
        with pytest.raises(OSError) as e:
            fileutils.clone_or_sparse_copy(sparse_src, str(tmp_path / 'd'))
    assert e.value.errno == errno.EIO


def test_clone_refuses_existing_target(tmp_path, sparse_src):
    dst = tmp_path / 'dst'
    dst.write_bytes(b'keep me')
    with pytest.raises(FileExistsError):
        fileutils.clone_or_sparse_copy(sparse_src, str(dst))
    assert dst.read_bytes() == b'keep me'


# -- SparseWriter -------------------------------------------------------------

def test_sparse_writer(tmp_path):
    chunks = ([os.urandom(MiB)] + [bytes(MiB)] * 20 + [b'\x07' * 1000] +
              [bytes(MiB)] * 5 + [bytes(123)])
    whole = b''.join(chunks)
    path = tmp_path / 'out'
    with open(path, 'wb') as f:
        writer = fileutils.SparseWriter(f)
        for chunk in chunks:
            writer.write(chunk)
        writer.close()
    assert writer.size == len(whole)
    assert writer.sha256.hexdigest() == hashlib.sha256(whole).hexdigest()
    assert path.read_bytes() == whole
    # The zero chunks became holes (trailing ones included).
    assert os.stat(path).st_blocks * 512 < 3 * MiB


def test_sparse_writer_all_zeros(tmp_path):
    path = tmp_path / 'out'
    with open(path, 'wb') as f:
        writer = fileutils.SparseWriter(f)
        for _ in range(4):
            writer.write(bytes(MiB))
        writer.close()
    assert os.path.getsize(path) == 4 * MiB
    assert os.stat(path).st_blocks == 0
    assert writer.sha256.hexdigest() == hashlib.sha256(
        bytes(4 * MiB)).hexdigest()


def test_sparse_writer_empty_stream(tmp_path):
    path = tmp_path / 'out'
    with open(path, 'wb') as f:
        writer = fileutils.SparseWriter(f)
        writer.close()
    assert path.read_bytes() == b''
    assert writer.sha256.hexdigest() == hashlib.sha256(b'').hexdigest()


def test_sparse_writer_odd_chunks(tmp_path):
    # Chunks of any size, zero or not, larger than the zero buffer too.
    chunks = [b'a', bytes(7), bytes(3 * MiB), b'b' * (2 * MiB + 1), bytes(1)]
    whole = b''.join(chunks)
    buf = io.BytesIO()
    path = tmp_path / 'out'
    with open(path, 'wb') as f:
        writer = fileutils.SparseWriter(f)
        for chunk in chunks:
            writer.write(chunk)
            buf.write(chunk)
        writer.close()
    assert path.read_bytes() == whole == buf.getvalue()
    assert writer.sha256.hexdigest() == hashlib.sha256(whole).hexdigest()


# -- sha256_file --------------------------------------------------------------

@pytest.mark.parametrize('size, extents', [
    (100 * MiB, {0: b'\xab' * MiB}),
    (10 * MiB, {5 * MiB + 17: b'middle'}),
    (10 * MiB, {10 * MiB - 3: b'end'}),
    (7 * MiB + 5, {}),
    (0, {}),
    (3 * MiB + 1, {0: b'\x01' * (3 * MiB + 1)}),
])
def test_sha256_file_matches_hashlib(tmp_path, size, extents):
    path = make_sparse(tmp_path / 'f', size, extents)
    assert fileutils.sha256_file(path) == full_sha256(path)


def test_sha256_file_reads_holes_as_zeros_without_reading_them(tmp_path):
    path = make_sparse(tmp_path / 'f', 100 * MiB, {0: b'\xab' * MiB})
    assert os.stat(path).st_blocks * 512 < 100 * MiB
    expected = hashlib.sha256(b'\xab' * MiB + bytes(99 * MiB)).hexdigest()
    assert fileutils.sha256_file(path) == expected


# -- allocated_bytes ----------------------------------------------------------

def test_allocated_bytes_of_sparse_file(tmp_path):
    path = make_sparse(tmp_path / 'f', 100 * MiB, {0: b'\xab' * MiB})
    allocated = fileutils.allocated_bytes(path)
    assert allocated == os.stat(path).st_blocks * 512
    assert MiB <= allocated < 100 * MiB


def test_allocated_bytes_of_hole_only_file(tmp_path):
    path = make_sparse(tmp_path / 'f', 100 * MiB, {})
    assert fileutils.allocated_bytes(path) == 0


def test_allocated_bytes_of_directory(tmp_path):
    d = tmp_path / 'd'
    (d / 'sub').mkdir(parents=True)
    a = make_sparse(d / 'a', 10 * MiB, {0: b'\x01' * MiB})
    b = make_sparse(d / 'sub' / 'b', 10 * MiB, {0: b'\x02' * (2 * MiB)})
    make_sparse(d / 'c', 10 * MiB, {})
    assert fileutils.allocated_bytes(str(d)) == (
        os.stat(a).st_blocks + os.stat(b).st_blocks) * 512
    assert fileutils.allocated_bytes(str(d)) >= 3 * MiB


# -- remove_path --------------------------------------------------------------

def test_remove_path(tmp_path):
    f = tmp_path / 'f'
    f.write_bytes(b'x')
    d = tmp_path / 'd'
    (d / 'sub').mkdir(parents=True)
    (d / 'sub' / 'x').write_bytes(b'x')
    link = tmp_path / 'link'
    link.symlink_to(d)
    fileutils.remove_path(str(link))  # the link, not what it points to
    assert not os.path.lexists(link) and d.is_dir()
    fileutils.remove_path(str(f))
    fileutils.remove_path(str(d))
    fileutils.remove_path(str(tmp_path / 'absent'))
    assert os.listdir(tmp_path) == []


def test_fsync_tree_of_a_file(tmp_path):
    path = tmp_path / 'disk'
    path.write_bytes(b'x')
    with mock.patch.object(fileutils, 'fsync_file') as ff, \
            mock.patch.object(fileutils, 'fsync_dir') as fd:
        fileutils.fsync_tree(str(path))
    ff.assert_called_once_with(str(path))
    fd.assert_not_called()


def test_fsync_tree_of_a_directory_skips_links_and_special_files(tmp_path):
    disk = tmp_path / 'disk'
    (disk / 'sub').mkdir(parents=True)
    (disk / 'root.hds').write_bytes(b'x')
    (disk / 'sub' / 'f').write_bytes(b'y')
    os.symlink('/etc/passwd', disk / 'link')
    os.mkfifo(disk / 'fifo')  # opening it would block
    with mock.patch.object(fileutils, 'fsync_file') as ff, \
            mock.patch.object(fileutils, 'fsync_dir') as fd:
        fileutils.fsync_tree(str(disk))
    assert sorted(c.args[0] for c in ff.call_args_list) == [
        str(disk / 'root.hds'), str(disk / 'sub' / 'f')]
    # Each directory after its contents.
    assert [c.args[0] for c in fd.call_args_list] == [str(disk / 'sub'),
                                                      str(disk)]


def test_fsync_tree_really_fsyncs(tmp_path):
    disk = tmp_path / 'disk'
    disk.mkdir()
    (disk / 'root.hds').write_bytes(b'x')
    fileutils.fsync_tree(str(disk))
    fileutils.fsync_tree(str(disk / 'root.hds'))
