"""Many spawns, one fetch: threads and processes racing for one image.

The image source counts its fetches by appending one line per ``open()`` to
a count file (append mode, one write, flushed: every thread and process
appends to the same file) and then sleeps 0.5 s before the first chunk, so
whoever fetches holds the cache entry's lock long enough for everybody else
to pile up behind it. Callers start together from a barrier. Nothing here
asserts on time; the sleep only makes the overlap real.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
import uuid as uuid_mod

import pytest

import imagebackend
from imagebackend import names, sources
from tests.functional.conftest import Instance, MiB, qemu_info
from tests.hosts import make_conf

IMAGE = 'img'
SIZE = 128 * MiB
BACKENDS = ('qcow2', 'flat')
# Deadlock guards only (a hung test must fail, not hang CI); never
# assertions on how long anything took.
GUARD = 300


# -- sources -----------------------------------------------------------------

class CountingSource(sources.DirectoryImageSource):
    """A DirectoryImageSource that logs each fetch to ``count_file``."""

    delay = 0.5

    def __init__(self, directory: str, count_file: str):
        super().__init__(directory)
        self.count_file = count_file

    def _count(self, image_id: str) -> int:
        """Append this fetch; return how many there were before it."""
        with open(self.count_file, 'a+') as f:
            f.write(f'{os.getpid()} {threading.get_ident()} {image_id}\n')
            f.flush()
            os.fsync(f.fileno())
        return _lines(self.count_file) - 1

    def open(self, context, image_id):
        self._count(image_id)
        time.sleep(self.delay)
        yield from super().open(context, image_id)


class FetchBroke(Exception):
    pass


class FailingSource(CountingSource):
    """Yields one chunk, then the connection 'drops'."""

    delay = 0

    def open(self, context, image_id):
        self._count(image_id)
        chunks = sources.DirectoryImageSource.open(self, context, image_id)
        yield next(chunks)
        chunks.close()
        raise FetchBroke(f'connection to the image store lost ({image_id})')


class FlakySource(CountingSource):
    """The first fetch ever (over all callers) breaks after one chunk;
    every later one works."""

    def open(self, context, image_id):
        first = self._count(image_id) == 0
        time.sleep(self.delay)
        chunks = sources.DirectoryImageSource.open(self, context, image_id)
        if first:
            yield next(chunks)
            chunks.close()
            raise FetchBroke('first fetch broke')
        yield from chunks


def _lines(path: str) -> int:
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


# -- a host, the way the `host` fixture builds one ---------------------------------

def make_backend(instances_path: str, images_dir: str, count_file: str,
                 source_cls=CountingSource) -> imagebackend.Backend:
    return imagebackend.Backend(
        conf=make_conf(instances_path, images_dir),
        source=source_cls(images_dir, count_file))


def _spawn_disks(backend, image_type: str, uuids, barrier, errors) -> None:
    """One thread per uuid, all released by ``barrier``, each creating
    that instance's root disk from IMAGE."""
    def one(uuid: str) -> None:
        try:
            disk = backend.by_name(Instance(uuid=uuid), 'disk', image_type)
            barrier.wait(GUARD)
            disk.create_from_image(None, IMAGE, SIZE)
        except BaseException as e:  # reported by the caller
            errors.append((uuid, e, traceback.format_exc()))

    threads = [threading.Thread(target=one, args=(u,)) for u in uuids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
        assert not t.is_alive(), 'a spawn thread hung'


def process_worker(instances_path: str, images_dir: str, count_file: str,
                   image_type: str, uuids: list[str], barrier,
                   report: str) -> None:
    """Target of the spawned processes: a whole compute host of its own
    (ConfigOpts, Backend, source), running one thread per uuid."""
    errors: list = []
    backend = make_backend(instances_path, images_dir, count_file)
    try:
        _spawn_disks(backend, image_type, uuids, barrier, errors)
    except BaseException:
        errors.append((None, None, traceback.format_exc()))
    if errors:
        with open(report, 'w') as f:
            f.write('\n'.join(tb for _u, _e, tb in errors))
        raise SystemExit(1)


# -- checks ----------------------------------------------------------------------

def _base(host) -> str:
    return os.path.join(host.instances_path, '_base')


def _assert_disks(host, image_type: str, uuids) -> None:
    backend = imagebackend.Backend(conf=host)
    entry = backend.image_cache.get(names.image_cache_name(IMAGE))
    assert entry is not None
    for uuid in uuids:
        record = backend.records.get(uuid, 'disk')
        assert record is not None, uuid
        assert record.created, record
        assert record.backend == image_type
        assert record.virtual_size == SIZE
        assert record.source_id == IMAGE
        path = os.path.join(host.instances_path, uuid, 'disk')
        info = qemu_info(path, record.format)
        assert info['virtual-size'] == SIZE
        if image_type == 'qcow2':
            assert info['backing-filename'] == entry.path
    assert [n for n in os.listdir(_base(host))
            if n.endswith(names.PART_SUFFIX)] == []


def _uuids(n: int) -> list[str]:
    return [str(uuid_mod.uuid4()) for _ in range(n)]


# -- tests -------------------------------------------------------------------------

@pytest.mark.parametrize('image_type', BACKENDS)
def test_threads_fetch_once(host, make_image, tmp_path, image_type):
    make_image(IMAGE, 'qcow2', 64 * MiB)
    count = str(tmp_path / 'fetches')
    backend = imagebackend.Backend(
        conf=host, source=CountingSource(host.imagebackend.images_dir,
                                         count))
    uuids = _uuids(8)
    errors: list = []

    _spawn_disks(backend, image_type, uuids, threading.Barrier(len(uuids)),
                 errors)

    assert errors == [], '\n'.join(tb for _u, _e, tb in errors)
    assert _lines(count) == 1
    _assert_disks(host, image_type, uuids)


@pytest.mark.parametrize('start', ('spawn', 'fork'))
@pytest.mark.parametrize('image_type', BACKENDS)
def test_processes_fetch_once(host, make_image, tmp_path, image_type, start):
    """4 processes x 2 threads, each process its own Backend: one fetch."""
    make_image(IMAGE, 'qcow2', 64 * MiB)
    count = str(tmp_path / 'fetches')
    ctx = multiprocessing.get_context(start)
    per_process = [_uuids(2) for _ in range(4)]
    barrier = ctx.Barrier(sum(len(u) for u in per_process))
    reports = [str(tmp_path / f'report-{i}') for i in range(len(per_process))]
    procs = [ctx.Process(target=process_worker,
                         args=(host.instances_path,
                               host.imagebackend.images_dir, count,
                               image_type, uuids, barrier, report))
             for uuids, report in zip(per_process, reports)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(GUARD)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join()
    assert hung == []

    failures = [open(r).read() for r in reports if os.path.exists(r)]
    assert failures == []
    assert [p.exitcode for p in procs] == [0] * len(procs)
    assert _lines(count) == 1
    with open(count) as f:
        assert f.read().split()[2] == IMAGE
    _assert_disks(host, image_type, [u for us in per_process for u in us])


@pytest.mark.parametrize('image_type', BACKENDS)
def test_failed_fetch_leaves_nothing(host, make_image, tmp_path, instance,
                                     image_type):
    make_image(IMAGE, 'qcow2', 64 * MiB)
    count = str(tmp_path / 'fetches')
    broken = imagebackend.Backend(
        conf=host, source=FailingSource(host.imagebackend.images_dir, count))
    disk = broken.by_name(instance, 'disk', image_type)

    with pytest.raises(FetchBroke):
        disk.create_from_image(None, IMAGE, SIZE)

    assert _lines(count) == 1  # it did start fetching
    # No entry, no .part, no sidecar (and no .converted.part).
    assert os.listdir(_base(host)) == []
    assert broken.image_cache.get(names.image_cache_name(IMAGE)) is None
    assert not disk.exists()
    assert broken.records.get(instance.uuid, 'disk') is None
    assert not os.path.exists(disk.instance_dir)

    # The next attempt, with a source that works, fetches and succeeds.
    working = imagebackend.Backend(
        conf=host, source=CountingSource(host.imagebackend.images_dir,
                                         count))
    disk = working.by_name(instance, 'disk', image_type)
    disk.create_from_image(None, IMAGE, SIZE)
    assert _lines(count) == 2
    name = names.image_cache_name(IMAGE)
    assert sorted(os.listdir(_base(host))) == [name,
                                               name + names.META_SUFFIX]
    _assert_disks(host, image_type, [instance.uuid])


@pytest.mark.parametrize('image_type', BACKENDS)
def test_failed_fetch_under_contention(host, make_image, tmp_path,
                                       image_type):
    """The fetch everybody waits on breaks: its caller gets the error, the
    next waiter fetches again (once), and everyone else uses that."""
    make_image(IMAGE, 'qcow2', 64 * MiB)
    count = str(tmp_path / 'fetches')
    backend = imagebackend.Backend(
        conf=host, source=FlakySource(host.imagebackend.images_dir, count))
    uuids = _uuids(8)
    errors: list = []

    _spawn_disks(backend, image_type, uuids, threading.Barrier(len(uuids)),
                 errors)

    assert [type(e) for _u, e, _tb in errors] == [FetchBroke], errors
    failed = errors[0][0]
    assert _lines(count) == 2
    assert backend.records.get(failed, 'disk') is None
    assert not os.path.exists(os.path.join(host.instances_path, failed))
    _assert_disks(host, image_type, [u for u in uuids if u != failed])
