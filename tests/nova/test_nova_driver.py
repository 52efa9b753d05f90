"""Nova's real LibvirtDriver on the library's face, disk by disk against Nova's
own module.

tests/nova/nova_driver_scenarios.py runs in .venv-nova (real Nova 34.0.0):
Nova's LibvirtDriver, built as Nova's unit tests build it, makes one
instance's disks (root from a real qcow2 image, ephemeral, swap, config
drive), defines its domain on libvirt's real ``test:///default``, block
live-migrates it (``pre_live_migration``), resizes it to a bigger flavor
(``migrate_disk_and_power_off`` + ``finish_migration``), confirms the resize
(``_cleanup_resize``), rescues it and asks ``instance_on_disk``. It runs once
with the face in place of ``nova.virt.libvirt.imagebackend`` and once with
``--own`` (Nova's own module); both write each disk's ``qemu-img info`` and
``<disk>`` XML. This test compares them: every call has the same outcome,
and every disk the same XML, format, virtual size, backing file and (for
disks made from the image) guest-visible data, except the differences
listed in ON_PURPOSE with their reason.

flat, qcow2 and ploop run on files; lvm on the project's loop LVM
(tests/functional/lvm_env.py) and rbd on its real Ceph (the session's
ceph_cluster): run this module under ``flock /tmp/ib-heavy.lock``.
"""

import json
import os
import subprocess

import pytest

from benchmarks import process_log
from tests.functional import lvm_env
from tests.functional.test_rbd import purge
from tests.nova.test_nova_unittests import HERE, NOVA_PYTHON, ROOT

SCRIPT = os.path.join(HERE, 'nova_driver_scenarios.py')
GiB, MiB = 1024 ** 3, 1024 ** 2
IMAGE_SIZE = 64 * MiB     # the image's virtual size (the script's IMAGE_MB)
FILE_BACKENDS = ('flat', 'qcow2', 'ploop')
# On the project's loop LVM and real Ceph (run under flock
# /tmp/ib-heavy.lock with the other tests that start them).
HEAVY_BACKENDS = ('lvm', 'rbd')
BACKENDS = FILE_BACKENDS + HEAVY_BACKENDS
FACE_UUID = '6b2f5a34-bd6c-4b3b-8c4e-2b8d3f2f0a10'
OWN_UUID = '0c6f1d7e-3a4b-4d5e-9f60-7a8b9c0d1e2f'
SCENARIOS = ('construct', 'create', 'pre_live_migration', 'resize',
             'cleanup_resize', 'rescue', 'instance_on_disk')

# Calls that fail on Nova's own module too, the same way (Nova's driver,
# not the image backend): the face must fail them alike, not hide them.
NOVA_FAILS = {
    ('ploop', 'pre_live_migration'):
        # _create_images_and_backing makes a disk without backing file with
        # libvirt_utils.create_image(path, 'ploop', size): qemu-img has no
        # 'ploop' format.
        'oslo_concurrency.processutils.ProcessExecutionError',
    ('lvm', 'resize'):
        # migrate_disk_and_power_off: "Migration is not supported for LVM
        # backed instances" (MigrationPreCheckError, rolled back).
        'nova.exception.InstanceFaultRollback',
}

def cases(*scenarios):
    """(scenario, backend) params."""
    return [(scenario, backend)
            for scenario in scenarios for backend in BACKENDS]

# (backend, scenario, disk, field) -> why the library differs, on purpose.
PLOOP_DIR = ("Nova's own Ploop lets the driver's _create_ephemeral / "
             "_create_swap write a bare raw file at the disk's path while "
             "its XML says driver type 'ploop' (a ploop disk is a directory "
             "with root.hds and DiskDescriptor.xml, which libvirt's "
             "parallels driver opens); the library makes the ploop "
             "directory the XML describes")
ON_PURPOSE = {
    ('ploop', scenario, disk, 'ploop'): PLOOP_DIR
    for scenario in ('create', 'resize') for disk in ('vdb', 'vdc')
}
# Files in the instance directory only the library writes: its metadata
# records (what it made, from what, in which format).
LIBRARY_FILES = {'disks.json'}
# (backend, scenario) -> files the library has there earlier than Nova.
EARLIER_FILES = {
    ('ploop', 'create'): {
        # Nova's own Ploop writes a disk's disk.info entry when it is next
        # opened on an existing disk (resolve_driver_format: by the resize
        # and rescue it has one); the library writes it when it makes the
        # disk, so a host on Nova's module finds it from the start.
        'disk.info'},
}

# The fields of qemu-img info compared (file names are per run).
INFO_FIELDS = ('format', 'virtual-size', 'backing-filename-format',
               'qcow2-magic', 'ploop', 'missing', 'error', 'data-sha256')


def run_scenarios(out, own: bool, backends, args=(), env=None
                  ) -> subprocess.Popen:
    env = dict(env or os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS='ignore')
    if own:
        # Nova 34's Ploop grows with Virtuozzo's prl_disk_tool, not in
        # Debian: tests/nova/bin has a stand-in doing the same grow with
        # Debian's ploop tool. The face never calls it.
        env['PATH'] = os.path.join(HERE, 'bin') + os.pathsep + env['PATH']
    cmd = [NOVA_PYTHON, SCRIPT, '--json', str(out),
           '--backends', ','.join(backends), *args]
    return subprocess.Popen(cmd + (['--own'] if own else []), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def start_both(tmp, backends, args=None, env=None) -> dict:
    """The two runs (Nova's module, the face) started side by side."""
    assert os.path.exists(NOVA_PYTHON), (
        'no .venv-nova: run tools/bootstrap.sh (tools/test.sh does)')
    args = args or {}
    return {mode: run_scenarios(tmp / f'{mode}.json', mode == 'own',
                                backends, args.get(mode, ()), env)
            for mode in ('face', 'own')}


def finish_both(tmp, backends, procs) -> dict:
    """{'face': results, 'own': results} of runs :func:`start_both`
    started."""
    results = {}
    for mode, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-5000:]
        results[mode] = json.loads((tmp / f'{mode}.json').read_text())
        for backend in backends:
            assert 'harness_error' not in results[mode][backend], (
                mode, results[mode][backend]['harness_error'])
    return results


@pytest.fixture(scope='module')
def all_runs(tmp_path_factory, ceph_cluster):
    """{'file': runs, 'heavy': runs}: the file backends' two runs and,
    at the same time (most of each is waiting on Nova's imports, fsync and
    Ceph), lvm on the project's loop LVM and rbd on its real Ceph. The
    heavy runs share the volume group and the pool: their instances
    differ."""
    file_tmp = tmp_path_factory.mktemp('novadriver')
    heavy_tmp = tmp_path_factory.mktemp('novadriver-heavy')
    lvm = lvm_env.LvmEnv(str(tmp_path_factory.mktemp('lvm'))).start()
    procs = []
    try:
        vg = lvm.add_vg(size=8 * lvm_env.GiB, prefix='ibnova')
        env = dict(os.environ, **lvm.environ(), CEPH_CONF=ceph_cluster.conf)
        common = ('--lvm-vg', vg, '--rbd-conf', ceph_cluster.conf,
                  '--rbd-pool', ceph_cluster.pool)
        args = {mode: common + ('--instance-uuid', uuid)
                for mode, uuid in (('face', FACE_UUID), ('own', OWN_UUID))}
        file_procs = start_both(file_tmp, FILE_BACKENDS)
        procs += file_procs.values()
        heavy_procs = start_both(heavy_tmp, HEAVY_BACKENDS, args, env)
        procs += heavy_procs.values()
        yield {'file': finish_both(file_tmp, FILE_BACKENDS, file_procs),
               'heavy': finish_both(heavy_tmp, HEAVY_BACKENDS, heavy_procs)}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        purge(ceph_cluster)
        left = lvm.close()
        assert not left, left


@pytest.fixture(scope='module')
def file_runs(all_runs):
    return all_runs['file']


@pytest.fixture(scope='module')
def heavy_runs(all_runs):
    return all_runs['heavy']


@pytest.fixture
def runs(request, backend):
    """The two runs that hold ``backend``."""
    return request.getfixturevalue(
        'heavy_runs' if backend in HEAVY_BACKENDS else 'file_runs')


def outcome(entry: dict):
    call = entry.get('call')
    return call if isinstance(call, str) or call is None else call['error']


def describe(entry: dict) -> str:
    call = entry.get('call')
    return call['traceback'] if isinstance(call, dict) else str(call)


def disk_view(disk: dict) -> dict:
    info = disk.get('info') or {}
    view = {field: info.get(field) for field in INFO_FIELDS}
    backing = info.get('backing-filename')
    view['backing-file'] = os.path.basename(backing) if backing else None
    view['xml'] = disk.get('xml')
    return view


@pytest.mark.parametrize('scenario,backend', cases(*SCENARIOS))
def test_driver_call_has_novas_outcome(runs, backend, scenario):
    face = runs['face'][backend][scenario]
    own = runs['own'][backend][scenario]
    expected = NOVA_FAILS.get((backend, scenario), 'ok')
    assert outcome(own) == expected, describe(own)
    assert outcome(face) == expected, describe(face)
    # Each domain XML Nova's driver built on the face is one libvirt
    # accepts (defined on test:///default), as on Nova's own module.
    assert face.get('define') == own.get('define'), (face.get('define'),
                                                     own.get('define'))
    if scenario in ('create', 'resize', 'rescue') and expected == 'ok':
        assert face['define'] == 'ok'


@pytest.mark.parametrize('scenario,backend', cases(
    'create', 'pre_live_migration', 'resize', 'rescue'))
def test_driver_disks_match_novas(runs, backend, scenario):
    face = runs['face'][backend][scenario].get('disks') or {}
    own = runs['own'][backend][scenario].get('disks') or {}
    assert sorted(face) == sorted(own)
    differences = {}
    for disk in own:
        mine, novas = disk_view(face[disk]), disk_view(own[disk])
        for field in novas:
            if mine[field] == novas[field]:
                continue
            if (backend, scenario, disk, field) in ON_PURPOSE:
                continue
            differences[f'{disk} {field}'] = {'face': mine[field],
                                              'own': novas[field]}
    assert not differences, json.dumps(differences, indent=1)
    stale = [key for key in ON_PURPOSE if key[:2] == (backend, scenario)
             and disk_view(face.get(key[2], {}))[key[3]]
             == disk_view(own.get(key[2], {}))[key[3]]]
    assert not stale, f'no longer differs, remove from ON_PURPOSE: {stale}'


# The ephemeral disk after the resize to a 2 GiB ephemeral: Nova grows a
# flat and an rbd one, not a qcow2 or ploop one (its cache() finds the disk
# there); LVM instances cannot be resized.
RESIZED_EPHEMERAL = {'flat': 2 * GiB, 'qcow2': GiB, 'ploop': GiB,
                     'rbd': 2 * GiB, 'lvm': None}


@pytest.mark.parametrize('backend', BACKENDS)
def test_created_disks_are_what_the_flavor_asks(runs, backend):
    """Not only equal to Nova's: right. 1 GiB root and ephemeral, 32 MiB
    swap; the root 2 GiB after the resize to the bigger flavor; the rescue
    disk the image's size, the instance's root beside it; the image's data
    in each root and rescue disk."""
    results = runs['face'][backend]
    size = {scenario: {disk: (view.get('info') or {}).get('virtual-size')
                       for disk, view in
                       (results[scenario].get('disks') or {}).items()}
            for scenario in ('create', 'resize', 'rescue')}
    assert size['create'] == {'vda': GiB, 'vdb': GiB, 'vdc': 32 * MiB,
                              'hda': size['create']['hda']}
    resized = RESIZED_EPHEMERAL[backend]
    if resized is None:
        assert size['resize'] == {}
    else:
        assert size['resize']['vda'] == 2 * GiB
        assert size['resize']['vdb'] == resized
        assert size['resize']['vdc'] == 32 * MiB
    assert size['rescue']['vda'] == IMAGE_SIZE
    assert size['rescue']['vdb'] == (GiB if resized is None else 2 * GiB)
    # The guest reads the image's bytes from each disk made from it.
    image = results['image']['sha256']
    for scenario, disk in (('create', 'vda'), ('resize', 'vda'),
                           ('rescue', 'vda'), ('rescue', 'vdb')):
        if scenario in ('create', 'rescue') or resized is not None:
            info = results[scenario]['disks'][disk]['info']
            assert info['data-sha256'] == image, (scenario, disk)


@pytest.mark.parametrize('backend', ('flat', 'qcow2'))
def test_warm_instance_runs_no_qemu_img_info(file_runs, backend):
    """Through Nova's unmodified driver (its legacy cache()), a second
    instance on cached bases runs no qemu-img info: bases and disks the
    library made are described by their sidecars and records. Nova's own
    module probes them (so the count is seen to work)."""
    def infos(mode):
        entry = file_runs[mode][backend]['warm_create']
        assert entry['call'] == 'ok', describe(entry)
        return [c for c in entry['commands']
                if process_log.is_qemu_img_info(c)]
    assert infos('own')
    assert infos('face') == []


@pytest.mark.parametrize('backend', BACKENDS)
def test_driver_answers_match_novas(runs, backend):
    face, own = runs['face'][backend], runs['own'][backend]
    assert face['construct']['result'] == 'imagebackend.nova'
    assert own['construct']['result'] == 'nova.virt.libvirt.imagebackend'
    for scenario in ('cleanup_resize', 'instance_on_disk'):
        assert face[scenario]['result'] == own[scenario]['result']
    # The _resize directory is gone after _cleanup_resize.
    assert face['cleanup_resize']['result'] is False
    assert face['instance_on_disk']['result'] is True
    # What the source sends to pre_live_migration describes the same disks.
    sent = {mode: runs[mode][backend]['pre_live_migration']['source_disk_info']
            for mode in ('face', 'own')}
    if backend == 'ploop':
        # disk_size counts the bytes of the disk's files: a ploop
        # directory's (the library) vs a bare file's (PLOOP_DIR).
        for disks in sent.values():
            for disk in disks:
                if os.path.basename(disk['path']) in ('disk.local',
                                                      'disk.swap'):
                    del disk['disk_size'], disk['over_committed_disk_size']
    assert sent['face'] == sent['own']


@pytest.mark.parametrize('backend', BACKENDS)
def test_driver_calls_leave_no_more_running_than_novas(runs, backend):
    # Threads of the process after every scenario: the face makes a
    # library Backend per disk, and a Ceph client it left open would keep
    # its threads (15 each here) for the life of nova-compute. Equal in
    # every run so far; a few threads of slack keep a slow exit of an
    # unrelated thread from failing the test, not a leaked client.
    threads = {mode: runs[mode][backend]['threads']['result']
               for mode in ('face', 'own')}
    assert threads['face'] <= threads['own'] + 4, threads


def instance_files(runs, mode, backend, scenario):
    return set(runs[mode][backend][scenario]['files'])


@pytest.mark.parametrize('scenario,backend', cases(
    'create', 'pre_live_migration', 'cleanup_resize', 'rescue'))
def test_instance_directory_holds_novas_files(runs, backend, scenario):
    """The same files as Nova's module leaves (its disk.info too), plus
    the library's records."""
    face = instance_files(runs, 'face', backend, scenario)
    own = instance_files(runs, 'own', backend, scenario)
    earlier = EARLIER_FILES.get((backend, scenario), set())
    assert earlier.isdisjoint(own), f'remove from EARLIER_FILES: {earlier}'
    assert face - LIBRARY_FILES - earlier == own


@pytest.mark.parametrize('backend', ('flat', 'qcow2'))
def test_instance_directory_keeps_novas_disk_info(runs, backend):
    """A host on Nova's own module can open these disks: Nova's disk.info
    is there after each step, as Nova's module leaves it."""
    for scenario in ('create', 'cleanup_resize', 'rescue'):
        assert 'disk.info' in instance_files(runs, 'own', backend, scenario)
        assert 'disk.info' in instance_files(runs, 'face', backend, scenario)
