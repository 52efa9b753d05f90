"""The state files that travel with an instance (disks.json, Nova's
disk.info) are read only from regular files.

An instance directory is copied from another host on migration; a
disks.json or disk.info that arrives as a symlink must not make this host
read one of its own files, and one that arrives as a FIFO must not block
the compute service for ever. Both are CorruptRecord, named.
"""

from __future__ import annotations

import json
import os
import threading

import pytest

from imagebackend import disk_info
from imagebackend import exception
from imagebackend import records

UUID = '5d3c9a1e-3f4b-4c6d-8e7f-9a0b1c2d3e4f'


def read_records(tmp_path):
    return records.InstanceDirStore(str(tmp_path), str(tmp_path)).get(UUID,
                                                                 'disk')


def read_disk_info(tmp_path):
    return disk_info.read(str(tmp_path / UUID / 'disk.info'))


READERS = {'disks.json': read_records, 'disk.info': read_disk_info}


@pytest.fixture
def instance_dir(tmp_path):
    path = tmp_path / UUID
    path.mkdir()
    return path


def finishes(func, *args) -> BaseException | None:
    """Run ``func`` in a thread; the error it raised. Fails if it is still
    running after 10 s (a read blocked on a FIFO)."""
    seen: dict = {}

    def run():
        try:
            func(*args)
        except BaseException as e:   # noqa: B902 (handed to the test)
            seen['error'] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), f'{func.__name__} blocked'
    return seen.get('error')


@pytest.mark.parametrize('name', sorted(READERS))
def test_a_symlinked_state_file_is_not_followed(tmp_path, instance_dir,
                                                 name):
    # Valid content behind the link: refused all the same.
    elsewhere = tmp_path / 'host-file.json'
    elsewhere.write_text(json.dumps({'disks': {}, 'schema_version': 1}))
    os.symlink(elsewhere, instance_dir / name)
    with pytest.raises(exception.CorruptRecord) as e:
        READERS[name](tmp_path)
    assert 'symlink' in str(e.value)
    assert name in str(e.value)


@pytest.mark.parametrize('name', sorted(READERS))
def test_a_fifo_state_file_is_refused_without_blocking(tmp_path,
                                                       instance_dir, name):
    os.mkfifo(instance_dir / name)
    error = finishes(READERS[name], tmp_path)
    assert isinstance(error, exception.CorruptRecord), error
    assert 'not a regular file' in str(error)


@pytest.mark.parametrize('name', sorted(READERS))
def test_a_directory_state_file_is_refused(tmp_path, instance_dir, name):
    (instance_dir / name).mkdir()
    with pytest.raises(exception.CorruptRecord) as e:
        READERS[name](tmp_path)
    assert 'not a regular file' in str(e.value)


@pytest.mark.parametrize('name', sorted(READERS))
def test_a_missing_state_file_is_no_entries(tmp_path, instance_dir, name):
    assert not READERS[name](tmp_path)
