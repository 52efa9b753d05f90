"""The cache's block-list digest (fileutils.file_digest / SparseWriter):
independent of sparseness, proportional to data, labelled."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from imagebackend import fileutils

MiB = 1024 * 1024
TiB = 1024 ** 4


def _sparse(path, size, extents) -> str:
    with open(path, 'wb') as f:
        f.truncate(size)
        for offset, data in extents.items():
            f.seek(offset)
            f.write(data)
    return str(path)


def _streamed(path, data: bytes, chunks) -> tuple[str, bytes]:
    """Write ``data`` through a SparseWriter in chunks of the given sizes."""
    with open(path, 'wb') as out:
        writer = fileutils.SparseWriter(out)
        pos = 0
        for n in chunks:
            writer.write(data[pos:pos + n])
            pos += n
        writer.write(data[pos:])
        writer.close()
    with open(path, 'rb') as f:
        return writer.digest(), f.read()


CASES = [
    (0, {}),
    (7 * MiB + 5, {}),
    (10 * MiB, {5 * MiB + 17: b'middle'}),
    (10 * MiB, {10 * MiB - 3: b'end'}),
    (3 * MiB + 1, {0: b'\x01' * (3 * MiB + 1)}),
    (5 * MiB, {MiB - 2: b'across-a-block-boundary'}),
]


@pytest.mark.parametrize('size, extents', CASES)
def test_writer_and_file_agree_whatever_the_chunking(tmp_path, size,
                                                     extents):
    path = _sparse(tmp_path / 'f', size, extents)
    with open(path, 'rb') as f:
        data = f.read()
    rng = random.Random(size)
    chunks = [rng.choice((1, 511, 4096, MiB - 1, MiB, MiB + 3))
              for _ in range(12)]
    digest, written = _streamed(tmp_path / 'w', data, chunks)
    assert written == data
    assert digest == fileutils.file_digest(path)
    assert digest.startswith(fileutils.DIGEST_PREFIX)
    assert fileutils.digest_matches(path, digest)


def test_holes_and_written_zeros_hash_the_same(tmp_path):
    sparse = _sparse(tmp_path / 'sparse', 8 * MiB, {3 * MiB: b'data'})
    dense = tmp_path / 'dense'
    data = bytearray(8 * MiB)
    data[3 * MiB:3 * MiB + 4] = b'data'
    dense.write_bytes(bytes(data))
    assert os.stat(sparse).st_blocks < os.stat(dense).st_blocks
    assert fileutils.file_digest(sparse) == fileutils.file_digest(str(dense))


@pytest.mark.parametrize('other', [
    (8 * MiB, {3 * MiB: b'datA'}),          # one byte differs
    (8 * MiB + 1, {3 * MiB: b'data'}),      # same data, other size
    (8 * MiB, {4 * MiB: b'data'}),          # same bytes, other place
])
def test_any_difference_changes_the_digest(tmp_path, other):
    a = _sparse(tmp_path / 'a', 8 * MiB, {3 * MiB: b'data'})
    b = _sparse(tmp_path / 'b', *other)
    assert fileutils.file_digest(a) != fileutils.file_digest(b)
    assert not fileutils.digest_matches(b, fileutils.file_digest(a))


def test_one_tib_sparse_file_digest_reads_only_its_data(tmp_path):
    # A plain sha256 of this file hashes a TiB of zeros (hours); the
    # block-list digest reads the three extents.
    path = _sparse(tmp_path / 'huge', TiB, {0: b'boot', 600 * 1024 ** 3:
                                            b'middle', TiB - 5: b'tail'})
    digest = fileutils.file_digest(path)
    expected = hashlib.sha256()
    for index, block in ((0, b'boot' + bytes(MiB - 4)),
                         (600 * 1024, b'middle' + bytes(MiB - 6)),
                         (TiB // MiB - 1, bytes(MiB - 5) + b'tail\0')):
        expected.update(index.to_bytes(8, 'big') +
                        hashlib.sha256(block).digest())
    expected.update(b'size' + TiB.to_bytes(8, 'big'))
    assert digest == fileutils.DIGEST_PREFIX + expected.hexdigest()


def test_legacy_plain_sha256_still_verifies(tmp_path):
    path = _sparse(tmp_path / 'f', 3 * MiB, {MiB: b'legacy'})
    with open(path, 'rb') as f:
        plain = hashlib.sha256(f.read()).hexdigest()
    assert fileutils.digest_algorithm(plain) == 'sha256'
    assert fileutils.digest_matches(path, plain)
    assert not fileutils.digest_matches(path, '0' * 64)


@pytest.mark.parametrize('bad', ['', 'md5:abc', 'sha256-blocks-1MiB:xyz',
                                 None, 12, 'A' * 64])
def test_unknown_digest_is_an_error(tmp_path, bad):
    path = _sparse(tmp_path / 'f', MiB, {})
    with pytest.raises(ValueError):
        fileutils.digest_matches(path, bad)
