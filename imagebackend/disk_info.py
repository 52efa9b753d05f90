"""Nova's ``disk.info``: the formats Nova's own module decided, per disk path.

Nova's Flat, Qcow2 (and its driver, on pre-live-migration) keep one JSON
object ``{disk path: format}`` on one line in ``disk.info`` beside the
disks, so a raw disk whose guest wrote a qcow2 header is never taken for
qcow2 (Nova bug 1221190). The library's truth is its records
(``disks.json``); this module only reads and writes Nova's file, so an
instance can move between a host on Nova's module and one on the library.

Writes are atomic and durable (temp, fsync, rename, fsync dir) and run
under an external lock of the library's (``ib-disk-info-<hash>`` in the
lock directory), so library writers in any process never lose each
other's entries, whether or not they hold the instance lock.

Nova's own module writes the file under an in-process lock only, through
a fixed ``disk.info.tmp``, without fsync. Should a Nova process and a
library process write the same file at once (one instances_path shared by
a host on each), each rename is whole, so the file is never torn, but the
last rename wins and the other writer's new entry is lost. Nova writes an
entry again each time it builds the disk's object if it is missing;
the library writes it again on its next write of that disk's record or
``resolve_driver_format()``. Our temporary file has its own name, so the
two never write into one temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable

from oslo_concurrency import lockutils

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import locks
from imagebackend import nospace

FILENAME = 'disk.info'


def path_for(disk_path: str) -> str:
    """The disk.info that lists ``disk_path`` (Nova: the one beside it)."""
    return os.path.join(os.path.dirname(os.path.abspath(disk_path)),
                        FILENAME)


def read(info_path: str) -> dict[str, str]:
    """The entries of the disk.info at ``info_path`` ({} if there is
    none). CorruptRecord if it is not one JSON object of strings -- also
    when it is empty, which Nova reads as no entries: Nova makes the file
    empty before it writes it, without fsync, so an empty one is what a
    crash of Nova's left, and the entries it had are not known."""
    try:
        text = fileutils.read_state_file(info_path).decode('utf-8').rstrip()
    except FileNotFoundError:
        return {}
    except fileutils.NotRegularFile as e:
        raise exception.CorruptRecord(location=info_path, reason=e.strerror)
    except UnicodeDecodeError as e:
        raise exception.CorruptRecord(location=info_path,
                                      reason=f'not text: {e}')
    try:
        data = json.loads(text)
    except ValueError as e:
        raise exception.CorruptRecord(location=info_path,
                                      reason=f'not valid JSON: {e}')
    if not isinstance(data, dict):
        raise exception.CorruptRecord(location=info_path,
                                      reason='not a JSON object')
    for key, value in data.items():
        if not isinstance(value, str) or not value:
            raise exception.CorruptRecord(
                location=info_path,
                reason=f'the format of {key} is {value!r}, not a name')
    return data


def format_of(disk_path: str) -> str | None:
    """The format disk.info gives ``disk_path``, or None if not listed."""
    return read(path_for(disk_path)).get(os.path.abspath(disk_path))


def set_format(disk_path: str, fmt: str, lock_path: str, *,
               replaces: Iterable[str] = ()) -> bool:
    """List ``disk_path`` as ``fmt`` (and drop the entries ``replaces``
    names: where the disk was before a move). True if the file changed."""
    return update(path_for(disk_path), lock_path,
                  {os.path.abspath(disk_path): fmt}, replaces)


def remove(disk_path: str, lock_path: str) -> bool:
    """Drop ``disk_path``'s entry, if any. True if the file changed."""
    return update(path_for(disk_path), lock_path, {},
                  [os.path.abspath(disk_path)])


def update(info_path: str, lock_path: str, entries: dict[str, str],
           drop: Iterable[str] = ()) -> bool:
    """Read-modify-write the disk.info at ``info_path`` under its lock:
    remove the paths in ``drop``, then set ``entries``. Nothing is written
    when nothing changes, and a missing file is not made for a removal. The
    file is removed when its last entry is. True if the file changed.
    CorruptRecord if the file is garbled (it is left as it is: the
    operator must see what was there)."""
    with _lock(info_path, lock_path):
        current = read(info_path)
        wanted = dict(current)
        for path in drop:
            wanted.pop(path, None)
        wanted.update(entries)
        if wanted == current:
            return False
        directory = os.path.dirname(info_path)
        if not wanted:
            os.unlink(info_path)
            fileutils.fsync_dir(directory)
            return True
        os.makedirs(directory, exist_ok=True)
        _write(info_path, wanted)
        return True


def _lock(info_path: str, lock_path: str):
    key = hashlib.sha256(os.path.abspath(info_path).encode()).hexdigest()
    os.makedirs(lock_path, exist_ok=True)
    return lockutils.lock(f'disk-info-{key[:32]}',
                          lock_file_prefix=locks.LOCK_PREFIX, external=True,
                          lock_path=lock_path)


@nospace.guarded(lambda path, *a, **k: path)
def _write(info_path: str, entries: dict[str, str]) -> None:
    """Nova's form (one JSON object, one line), atomically and durably."""
    fileutils.atomic_write_json(info_path, entries, indent=None)
