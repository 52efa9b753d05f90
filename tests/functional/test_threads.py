"""One Backend, 16 native threads: spawn, resize and delete at once.

nova-compute runs on native threads since 34.0.0 (no eventlet): every
request of a host shares one Backend, its image cache and its record store.
Here 16 threads share one, on instances made from two images (so many
threads ask for one cache entry at once), and some pairs of threads work on
one instance (so the instance lock has to serialise them). Each thread
spawns its instance through the driver flows, resizes it in place
(``finish_migration`` on the same host, as a resize to a bigger flavor
does) and, for every third instance, deletes it.

Afterwards every disk is checked against what a serial run gives, whatever
the interleaving was: records saying ``created`` with the sizes the disks
have (``qemu-img info``/``check`` with ``-f``), disk.info agreeing, nothing
half-made or temporary left, each image fetched once, each template made
once, every cache sidecar still verifying. The only error a thread may see
is the CannotShrink a pair's smaller resize gets when it runs second.

Each race this found has a test of its own at the end, which makes it
happen every run rather than once in a while.

Nothing here asserts on time; the image source's short sleep only makes
threads pile up behind the fetch for real.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
import threading
import time
import traceback

import pytest

import imagebackend
from imagebackend import disk_info
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import parallels
from imagebackend import processes
from imagebackend import sources
from imagebackend import records as records_mod
from imagebackend.backends import ploop as ploop_mod

from driver import flows
from driver import instance as instance_mod
from tests.functional.conftest import qemu_info, run
from tests.hosts import GiB, MiB

GUARD = 300          # seconds: a deadlock guard, never an assertion
THREADS = 16
SOLO = 8             # instances with one thread each
PAIRS = 4            # instances with two threads each
IMAGES = {'img-a': 0xa1, 'img-b': 0xb2}
SPAWN = instance_mod.Flavor(root_gb=1, ephemeral_gb=1, swap=32)
# A solo thread's resize; a pair's bigger and smaller ones.
GROW = instance_mod.Flavor(root_gb=2, ephemeral_gb=2, swap=48)
GROW_BIG = instance_mod.Flavor(root_gb=3, ephemeral_gb=2, swap=64)
# Ploop: `ploop grow` writes zeros over every added byte (seconds per GiB),
# so its resize only makes swap again at another size, the same for both
# threads of a pair.
GROW_PLOOP = instance_mod.Flavor(root_gb=1, ephemeral_gb=1, swap=48)
DISKS = ('disk', 'disk.local', 'disk.swap')


class CountingSource(sources.DirectoryImageSource):
    """Counts fetches per image; holds each fetch a moment so that every
    thread wanting the image is waiting on its cache entry meanwhile."""

    def __init__(self, directory: str):
        super().__init__(directory)
        self.fetches: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def open(self, context, image_id):
        with self._lock:
            self.fetches[image_id] += 1
        time.sleep(0.3)
        yield from super().open(context, image_id)


@dataclasses.dataclass
class Job:
    """One thread's work on one instance."""

    uuid: str
    image: str
    resize: instance_mod.Flavor
    delete: bool
    errors: list = dataclasses.field(default_factory=list)


def _instance(job: Job, flavor) -> instance_mod.Instance:
    # Each thread has its own instance object, as two requests would.
    return instance_mod.Instance(uuid=job.uuid, image_ref=job.image,
                                 name='vm', flavor=flavor)


def _work(backend, job: Job, barrier) -> None:
    try:
        barrier.wait(GUARD)
        inst = _instance(job, SPAWN)
        flows.spawn(backend, None, inst, instance_mod.disk_mapping(inst))
        inst = _instance(job, job.resize)
        try:
            flows.finish_migration(backend, None, inst,
                                   instance_mod.disk_mapping(inst))
        except exception.CannotShrink as e:
            job.errors.append(e)   # the pair's other resize ran first
        if job.delete:
            flows.destroy_disks(backend, inst)
    except BaseException:
        job.errors.append(traceback.format_exc())


def _jobs(image_type: str
          ) -> tuple[list[Job], dict[str, tuple[Job, ...]]]:
    """16 jobs; and per instance uuid, the jobs working on it."""
    grow, grow_big = (GROW_PLOOP, GROW_PLOOP) if image_type == 'ploop' \
        else (GROW, GROW_BIG)
    jobs, by_uuid = [], {}
    images = sorted(IMAGES)
    for i in range(SOLO + PAIRS):
        uuid = f'7f000000-0000-4000-8000-{i:012d}'
        image = images[i % len(images)]
        delete = i % 3 == 2
        if i < SOLO:
            mine = (Job(uuid, image, grow, delete),)
        else:
            mine = (Job(uuid, image, grow_big, delete),
                    Job(uuid, image, grow, delete))
        jobs.extend(mine)
        by_uuid[uuid] = mine
    assert len(jobs) == THREADS
    return jobs, by_uuid


def _run_threads(backend, jobs) -> None:
    barrier = threading.Barrier(len(jobs))
    threads = [threading.Thread(target=_work, args=(backend, job, barrier))
               for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
        assert not t.is_alive(), 'a thread hung (deadlock?)'


# -- checks --------------------------------------------------------------------------

def _check_errors(by_uuid) -> None:
    for uuid, jobs in by_uuid.items():
        crashes = [e for j in jobs for e in j.errors if isinstance(e, str)]
        assert not crashes, '\n'.join(crashes)
        refused = [j for j in jobs if j.errors]
        # Only a pair's smaller resize, and only when it ran second.
        assert all(j.resize is GROW and len(jobs) == 2 and
                   isinstance(j.errors[0], exception.CannotShrink) and
                   len(j.errors) == 1 for j in refused), (uuid, refused)


def _check_cache(backend, image_type: str, source, commands) -> set[str]:
    """Each image fetched once, each template made once, every entry whole
    with a sidecar that still verifies; returns the entry names."""
    assert dict(source.fetches) == {i: 1 for i in IMAGES}
    cache = backend.image_cache
    listing = sorted(os.listdir(cache.base_dir))
    data = [n for n in listing if not n.endswith(names.META_SUFFIX)]
    assert sorted(n + names.META_SUFFIX for n in data) == sorted(
        set(listing) - set(data)), listing          # sidecar per entry
    for name in data:
        entry = cache.check(name)
        assert entry is not None, name
        assert fileutils.file_digest(entry.path) == entry.sha256, name
        assert entry.virtual_size == qemu_info(entry.path, entry.format)[
            'virtual-size'], name
    images = {names.image_cache_name(i) for i in IMAGES}
    assert images <= set(data)
    # Templates (Qcow2 keeps them in _base) are each made exactly once.
    made = collections.Counter(
        os.path.basename(c[-1]) for c in commands
        if c[0] in ('mkfs', 'mkswap') and
        os.path.dirname(c[-1]) == cache.base_dir)
    templates = set(data) - images
    assert made == {t + names.PART_SUFFIX: 1 for t in templates}, made
    if image_type != 'qcow2':
        assert templates == set()
    return set(data)


def _expected(jobs) -> instance_mod.Flavor:
    """What a serial run leaves: the biggest resize of the instance."""
    return max((j.resize for j in jobs), key=lambda f: f.root_gb)


def _check_instance(backend, image_type: str, uuid: str, jobs,
                    entries: set[str]) -> None:
    instance_dir = os.path.join(backend.conf.instances_path, uuid)
    records = {r.name: r for r in backend.records.list(uuid)}
    if jobs[0].delete:
        assert records == {}
        assert not os.path.exists(instance_dir) or \
            os.listdir(instance_dir) == [], os.listdir(instance_dir)
        return
    flavor = _expected(jobs)
    sizes = {'disk': flavor.root_gb * GiB,
             'disk.local': flavor.ephemeral_gb * GiB,
             'disk.swap': flavor.swap * MiB}
    assert sorted(records) == sorted(DISKS)
    # Nothing half-made or temporary beside the disks.
    assert sorted(os.listdir(instance_dir)) == sorted(
        DISKS + (records_mod.RECORDS_FILE, disk_info.FILENAME))
    listed = disk_info.read(os.path.join(instance_dir, disk_info.FILENAME))
    assert listed == {os.path.join(instance_dir, n): records[n].format
                      for n in DISKS}
    for name, record in records.items():
        path = os.path.join(instance_dir, name)
        assert record.state == records_mod.CREATED, record
        assert record.backend == image_type
        assert record.location == path
        assert record.virtual_size == sizes[name], record
        if image_type == 'ploop':
            _check_ploop(path, record)
            continue
        info = qemu_info(path, record.format)
        assert info['format'] == record.format
        assert info['virtual-size'] == record.virtual_size, (record, info)
        if image_type == 'qcow2':
            assert record.format == 'qcow2'
            run('qemu-img', 'check', '-q', '-f', 'qcow2', path)
            assert record.backing in entries
            base = backend.image_cache.get(record.backing)
            assert info['backing-filename'] == base.path
            assert info['backing-filename-format'] == base.format
            assert record.backing_sha256 == base.sha256
        else:
            assert record.format == 'raw'
            assert os.path.getsize(path) == record.virtual_size
    # The guest sees its image at the start of its root disk.
    pattern = IMAGES[jobs[0].image]
    root_fmt, root = records['disk'].format, os.path.join(instance_dir, 'disk')
    if image_type == 'ploop':
        root_fmt, root = 'raw', os.path.join(root, ploop_mod.DATA)
    out = run('qemu-io', '-f', root_fmt, '-c', f'read -P {pattern} 0 1M',
              root)
    assert 'Pattern verification failed' not in out
    if image_type != 'qcow2':
        # The ephemeral filesystem was grown with its disk, and is whole.
        local = os.path.join(instance_dir, 'disk.local')
        if image_type == 'ploop':
            local = os.path.join(local, ploop_mod.DATA)
        run('e2fsck', '-fn', local)
        out = run('dumpe2fs', '-h', local)
        fields = dict(line.split(':', 1) for line in out.splitlines()
                      if ':' in line)
        assert int(fields['Block count']) * int(fields['Block size']) == \
            sizes['disk.local']


def _check_ploop(path: str, record) -> None:
    """A raw ploop disk: descriptor, data and record agree, and the ploop
    tool opens it through its descriptor."""
    assert record.format == 'ploop'
    assert record.provenance['ploop_format'] == 'raw'
    assert sorted(n for n in os.listdir(path) if not n.endswith('.lck')) \
        == [ploop_mod.DESCRIPTOR, ploop_mod.DATA]
    assert ploop_mod.read_descriptor(path).virtual_size == \
        record.virtual_size
    info = qemu_info(os.path.join(path, ploop_mod.DATA), 'raw')
    assert info['virtual-size'] == record.virtual_size
    listing = run('ploop', 'snapshot-list',
                  os.path.join(path, ploop_mod.DESCRIPTOR))
    assert parallels.TOP_GUID in listing


# Ploop runs the ploop tool: run this file under flock /tmp/ib-heavy.lock.
@pytest.mark.parametrize('image_type', ('flat', 'qcow2', 'ploop'))
def test_sixteen_threads_share_one_backend(host, make_image, image_type):
    for image_id, pattern in IMAGES.items():
        make_image(image_id, 'qcow2', 16 * MiB, pattern=pattern)
    host.set_override('images_type', image_type, group='libvirt')
    source = CountingSource(host.imagebackend.images_dir)
    backend = imagebackend.Backend(conf=host, source=source)
    jobs, by_uuid = _jobs(image_type)

    with processes.recording() as commands:
        _run_threads(backend, jobs)

    _check_errors(by_uuid)
    entries = _check_cache(backend, image_type, source, commands)
    for uuid, mine in by_uuid.items():
        _check_instance(backend, image_type, uuid, mine, entries)


# -- the races found, one by one -------------------------------------------------------

@pytest.fixture
def switch_often():
    """Threads switch every microsecond (Python's default is 5 ms), so a
    window of a few statements between two threads is hit in a test's
    time rather than once in a while in production."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def _template(target: str) -> None:
    with open(target, 'wb') as f:
        f.truncate(64 * 1024)


def test_check_while_an_entry_is_published(backend, switch_often):
    """ImageCache.check() outside the entry's lock, while another thread
    publishes the entry (sidecar, then data renamed in), says "not there"
    or gives the entry: never that its data has no sidecar."""
    cache = backend.image_cache
    count = 60
    wrong: list = []

    def publish():
        for i in range(count):
            cache.ensure_template(f'tpl_{i}', _template)

    def look():
        i = 0
        while i < count:
            try:
                if cache.check(f'tpl_{i}') is not None:
                    i += 1
            except exception.CorruptCacheEntry as e:
                wrong.append(str(e))
                i += 1

    threads = [threading.Thread(target=publish)] + [
        threading.Thread(target=look) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
        assert not t.is_alive()
    assert wrong == []
    # Data without a sidecar is still refused.
    os.unlink(cache.path('tpl_0') + names.META_SUFFIX)
    with pytest.raises(exception.CorruptCacheEntry, match='no sidecar'):
        cache.check('tpl_0')


@pytest.mark.parametrize('image_type', ('flat', 'qcow2'))
def test_two_threads_create_one_disk_through_the_api(host, make_image,
                                                     switch_often,
                                                     image_type):
    """Two threads create the same disk with Image.create_from_image (no
    flow, so no lock of the caller's): one makes it, the other is told it
    exists (DiskExists), and the disk is there, whole, as its record says.
    Before, both decided it was missing and the loser's undo removed the
    winner's disk under its `created` record (or qemu-img made it twice)."""
    make_image('img', 'raw', 16 * MiB)
    backend = imagebackend.Backend(conf=host)
    for _ in range(8):
        inst = instance_mod.Instance(image_ref='img')
        barrier = threading.Barrier(2)
        outcomes: list = []

        def create():
            disk = backend.by_name(inst, 'disk', image_type)
            barrier.wait(GUARD)
            try:
                disk.create_from_image(None, 'img', 32 * MiB)
                outcomes.append('made')
            except exception.DiskExists:
                outcomes.append('exists')
            except BaseException:
                outcomes.append(traceback.format_exc())

        threads = [threading.Thread(target=create) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(GUARD)
            assert not t.is_alive()
        assert sorted(outcomes) == ['exists', 'made'], outcomes
        record = backend.records.get(inst.uuid, 'disk')
        assert record.state == records_mod.CREATED
        path = os.path.join(host.instances_path, inst.uuid, 'disk')
        assert qemu_info(path, record.format)['virtual-size'] == 32 * MiB


@pytest.mark.parametrize('image_type', ('flat', 'qcow2'))
def test_two_threads_resize_one_disk_through_the_api(host, make_image,
                                                     switch_often,
                                                     image_type):
    """Two threads grow the same disk with Image.resize_image, each from
    a disk object opened (and its record read) before either started:
    the result is a serial one -- 48 MiB then 64, or 64 then 48 refused
    (CannotShrink) -- and disk and record agree at 64 MiB. Before, each
    decided from the size it had read, so one could shrink what the
    other grew (a raw disk cut back to 48 MiB under a record saying 64),
    or leave a record saying 48 on a 64 MiB disk."""
    make_image('img', 'raw', 16 * MiB)
    backend = imagebackend.Backend(conf=host)
    for _ in range(8):
        inst = instance_mod.Instance(image_ref='img')
        backend.by_name(inst, 'disk', image_type).create_from_image(
            None, 'img', 32 * MiB)
        barrier = threading.Barrier(2)
        outcomes: dict = {}

        def resize(size):
            disk = backend.from_metadata(inst, 'disk')
            barrier.wait(GUARD)
            try:
                disk.resize_image(size)
                outcomes[size] = 'grown'
            except exception.CannotShrink:
                outcomes[size] = 'refused'
            except BaseException:
                outcomes[size] = traceback.format_exc()

        threads = [threading.Thread(target=resize, args=(s,))
                   for s in (64 * MiB, 48 * MiB)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(GUARD)
            assert not t.is_alive()
        assert outcomes[64 * MiB] == 'grown', outcomes
        assert outcomes[48 * MiB] in ('grown', 'refused'), outcomes
        record = backend.records.get(inst.uuid, 'disk')
        path = os.path.join(host.instances_path, inst.uuid, 'disk')
        assert record.virtual_size == 64 * MiB
        assert qemu_info(path, record.format)['virtual-size'] == 64 * MiB
