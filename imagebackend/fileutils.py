"""File helpers: atomic writes, reflink-or-sparse copies, sparse hashing."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from typing import Any, Iterable

from imagebackend import nospace

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
CHUNK = 1024 * 1024
_ZEROS = bytes(CHUNK)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync ``path``: a file or block device, or a directory with every
    regular file and directory under it (each directory after its
    contents). Symlinks and special files inside a directory are not
    followed or opened: only what a disk is made of is flushed."""
    if not (os.path.isdir(path) and not os.path.islink(path)):
        fsync_file(path)
        return
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            p = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                fsync_file(p)
        fsync_dir(root)


class NotRegularFile(OSError):
    """A state file that is a symlink, FIFO, device or directory."""


def read_state_file(path: str) -> bytes:
    """The bytes of the small state file at ``path`` (disks.json,
    disk.info), which may have arrived with an instance from another host:
    never read through a symlink (it could name one of this host's files)
    and only from a regular file (a FIFO would block the read for ever).
    FileNotFoundError if there is none, NotRegularFile otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                     os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, 'a symlink, not a file',
                                 path) from e
        raise
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, 'not a regular file', path)
    with os.fdopen(fd, 'rb') as f:
        return f.read()


@nospace.guarded(lambda path, *a, **k: path)
def atomic_write_json(path: str, data: Any, indent: int | None = 1) -> None:
    """Write ``data`` as JSON to ``path``: temp file, fsync, rename, fsync
    the directory. ``indent=None``: one line (Nova's disk.info form)."""
    directory = os.path.dirname(path) or '.'
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(
        path) + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(data, f, indent=indent, sort_keys=True)
            f.write('\n')
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(directory)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_path(path: str) -> None:
    """Remove a file or directory tree if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        _unlink_quietly(path)


def _data_extents(fd: int, size: int) -> Iterable[tuple[int, int]]:
    """Yield ``(offset, length)`` of the allocated regions of a file."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole remains
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        pos = end


@nospace.guarded(lambda src, dst, *a, **k: dst)
def clone_or_sparse_copy(src: str, dst: str) -> str:
    """Copy ``src`` to a new file ``dst``; return ``'reflink'`` or ``'sparse'``.

    A reflink shares the source's extents (constant time, no space); where
    the filesystem cannot (ext4, or across filesystems) only allocated
    extents are copied, in-kernel, so holes stay holes.
    """
    with open(src, 'rb') as fsrc, open(dst, 'xb') as fdst:
        try:
            fcntl.ioctl(fdst.fileno(), FICLONE, fsrc.fileno())
            return 'reflink'
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL,
                               errno.ENOTTY, errno.EPERM):
                raise
        size = os.fstat(fsrc.fileno()).st_size
        for offset, length in _data_extents(fsrc.fileno(), size):
            copied = 0
            while copied < length:
                n = os.copy_file_range(fsrc.fileno(), fdst.fileno(),
                                       length - copied, offset + copied,
                                       offset + copied)
                if n == 0:
                    break
                copied += n
        os.ftruncate(fdst.fileno(), size)
        return 'sparse'


# -- the block-list digest ----------------------------------------------------
#
# A plain sha256 of a file costs time proportional to its size, holes
# included: hours for a sparse multi-TiB base. The cache's digest instead
# covers the file as fixed 1 MiB blocks (block i = bytes [i MiB, (i+1) MiB)):
#
#   sha256( for every block that is not all zeros, in order:
#               index (8 bytes, big endian) || sha256(block)
#           then b'size' || file size (8 bytes, big endian) )
#
# An all-zero block contributes nothing, whether it is a hole or written
# zeros, so the digest does not depend on how sparse the file is, and
# computing it reads only allocated extents: cost proportional to data.
# The value is labelled (``DIGEST_PREFIX``) so a sidecar says which
# algorithm made it; a bare 64-hex value is a plain sha256 (older sidecars).

DIGEST_BLOCK = CHUNK
DIGEST_PREFIX = 'sha256-blocks-1MiB:'
_PLAIN_SHA256 = re.compile(r'[0-9a-f]{64}')


class BlockDigest:
    """Accumulates the block-list digest; blocks are fed in index order."""

    def __init__(self) -> None:
        self._outer = hashlib.sha256()
        self._last = -1

    def add(self, index: int, block: bytes) -> None:
        if index <= self._last:
            raise ValueError('blocks must be added in increasing order')
        self._last = index
        if block == _ZEROS[:len(block)]:
            return
        self._outer.update(index.to_bytes(8, 'big') +
                           hashlib.sha256(block).digest())

    def hexdigest(self, size: int) -> str:
        outer = self._outer.copy()
        outer.update(b'size' + size.to_bytes(8, 'big'))
        return DIGEST_PREFIX + outer.hexdigest()


def file_digest(path: str) -> str:
    """The block-list digest of ``path``; reads only allocated extents."""
    digest = BlockDigest()
    with open(path, 'rb') as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        done = -1
        for offset, length in _data_extents(fd, size):
            first = max(offset // DIGEST_BLOCK, done + 1)
            last = (min(offset + length, size) - 1) // DIGEST_BLOCK
            for index in range(first, last + 1):
                start = index * DIGEST_BLOCK
                block = os.pread(fd, min(DIGEST_BLOCK, size - start), start)
                digest.add(index, block)
                done = index
    return digest.hexdigest(size)


def digest_algorithm(recorded: str) -> str:
    """``'blocks'`` or ``'sha256'`` (plain, legacy) for a recorded digest;
    ValueError for anything else."""
    if isinstance(recorded, str):
        if recorded.startswith(DIGEST_PREFIX) and _PLAIN_SHA256.fullmatch(
                recorded[len(DIGEST_PREFIX):]):
            return 'blocks'
        if _PLAIN_SHA256.fullmatch(recorded):
            return 'sha256'
    raise ValueError(f'unknown digest {recorded!r}')


def digest_matches(path: str, recorded: str) -> bool:
    """Whether ``path`` has the digest ``recorded``, by the algorithm that
    made it. A legacy plain sha256 is verified the legacy way (cost
    proportional to the file's size, holes included)."""
    if digest_algorithm(recorded) == 'blocks':
        return file_digest(path) == recorded
    return sha256_file(path) == recorded


class SparseWriter:
    """Write a stream to a file, leaving all-zero blocks as holes.

    Also digests the stream as it lands: :meth:`digest` is the block-list
    digest :func:`file_digest` gives the finished file (``sha256`` is a
    plain sha256 of every byte, for callers that want one).
    """

    def __init__(self, fileobj):
        self._f = fileobj
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._blocks = BlockDigest()
        self._buf = bytearray()

    @nospace.guarded(lambda self, *a: self._f.name)
    def write(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        view = memoryview(chunk)
        while view:
            n = min(DIGEST_BLOCK - len(self._buf), len(view))
            if not self._buf and n == DIGEST_BLOCK:
                self._flush_block(view[:n])  # a whole aligned block: no copy
            else:
                self._buf += view[:n]
                if len(self._buf) == DIGEST_BLOCK:
                    self._flush_block(self._buf)
                    self._buf = bytearray()
            view = view[n:]

    def _flush_block(self, block) -> None:
        block = bytes(block)
        self._blocks.add(self.size // DIGEST_BLOCK, block)
        if block == _ZEROS[:len(block)]:
            self._f.seek(len(block), os.SEEK_CUR)
        else:
            self._f.write(block)
        self.size += len(block)

    @nospace.guarded(lambda self, *a: self._f.name)
    def close(self) -> None:
        if self._buf:
            self._flush_block(self._buf)
            self._buf = bytearray()
        self._f.truncate(self.size)
        self._f.flush()
        os.fsync(self._f.fileno())

    def digest(self) -> str:
        """The block-list digest of what was written (after close)."""
        return self._blocks.hexdigest(self.size)


def sha256_file(path: str) -> str:
    """sha256 of a file's bytes; holes are hashed as zeros without reading."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        for offset, length in _data_extents(f.fileno(), size):
            _hash_zeros(digest, offset - pos)
            f.seek(offset)
            remaining = length
            while remaining:
                buf = f.read(min(CHUNK, remaining))
                if not buf:
                    break
                digest.update(buf)
                remaining -= len(buf)
            pos = offset + length
        _hash_zeros(digest, size - pos)
    return digest.hexdigest()


def _hash_zeros(digest, count: int) -> None:
    view = memoryview(_ZEROS)
    while count > 0:
        n = min(CHUNK, count)
        digest.update(view[:n])
        count -= n


def allocated_bytes(path: str) -> int:
    """Bytes allocated on the host for a file (or a directory's files)."""
    if os.path.isdir(path):
        return sum(allocated_bytes(os.path.join(path, n))
                   for n in os.listdir(path))
    return os.stat(path).st_blocks * 512
