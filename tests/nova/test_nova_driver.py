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
and every disk the same XML, format, virtual size and backing file, except
the differences listed in ON_PURPOSE with their reason.
"""

import json
import os
import subprocess

import pytest

from tests.nova.test_nova_unittests import HERE, NOVA_PYTHON, ROOT

SCRIPT = os.path.join(HERE, 'nova_driver_scenarios.py')
BACKENDS = ('flat', 'qcow2', 'ploop')
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
}

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

# The fields of qemu-img info compared (file names are per run).
INFO_FIELDS = ('format', 'virtual-size', 'backing-filename-format',
               'qcow2-magic', 'ploop', 'missing', 'error')


def run_scenarios(out, own: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS='ignore')
    if own:
        # Nova 34's Ploop grows with Virtuozzo's prl_disk_tool, not in
        # Debian: tests/nova/bin has a stand-in doing the same grow with
        # Debian's ploop tool. The face never calls it.
        env['PATH'] = os.path.join(HERE, 'bin') + os.pathsep + env['PATH']
    cmd = [NOVA_PYTHON, SCRIPT, '--json', str(out),
           '--backends', ','.join(BACKENDS)] + (['--own'] if own else [])
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """{'face': results, 'own': results}, the two runs side by side."""
    assert os.path.exists(NOVA_PYTHON), (
        'no .venv-nova: run tools/bootstrap.sh (tools/test.sh does)')
    tmp = tmp_path_factory.mktemp('novadriver')
    procs = {mode: run_scenarios(tmp / f'{mode}.json', mode == 'own')
             for mode in ('face', 'own')}
    results = {}
    for mode, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-5000:]
        results[mode] = json.loads((tmp / f'{mode}.json').read_text())
        for backend in BACKENDS:
            assert 'harness_error' not in results[mode][backend], (
                mode, results[mode][backend]['harness_error'])
    return results


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


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('scenario', SCENARIOS)
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
    if scenario in ('create', 'resize', 'rescue'):
        assert face['define'] == 'ok'


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('scenario', SCENARIOS)
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


@pytest.mark.parametrize('backend', BACKENDS)
def test_created_disks_are_what_the_flavor_asks(runs, backend):
    """Not only equal to Nova's: right. 1 GiB root and ephemeral, 32 MiB
    swap, root and ephemeral 2 GiB after the resize to the bigger flavor
    (Nova's qcow2 and ploop ephemeral keep their size: Nova grows only a
    flat one), the rescue disk the image's size."""
    GiB, MiB = 1024 ** 3, 1024 ** 2
    disks = runs['face'][backend]
    size = {scenario: {disk: (view.get('info') or {}).get('virtual-size')
                       for disk, view in disks[scenario]['disks'].items()}
            for scenario in ('create', 'resize', 'rescue')}
    assert size['create']['vda'] == GiB
    assert size['create']['vdb'] == GiB
    assert size['create']['vdc'] == 32 * MiB
    assert size['resize']['vda'] == 2 * GiB
    assert size['resize']['vdb'] == (2 * GiB if backend == 'flat' else GiB)
    assert size['rescue']['vda'] == 64 * MiB
    assert size['rescue']['vdb'] == 2 * GiB


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


def instance_files(runs, mode, backend, scenario):
    return set(runs[mode][backend][scenario].get('files') or ())


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('scenario', ('create', 'pre_live_migration',
                                      'cleanup_resize', 'rescue'))
def test_instance_directory_holds_novas_files(runs, backend, scenario):
    """The same files as Nova's module leaves, plus the library's records;
    disk.info is compared in the test below."""
    face = instance_files(runs, 'face', backend, scenario) - {'disk.info'}
    own = instance_files(runs, 'own', backend, scenario) - {'disk.info'}
    assert face - LIBRARY_FILES == own


@pytest.mark.parametrize('backend', ('flat', 'qcow2'))
def test_instance_directory_keeps_novas_disk_info(runs, backend):
    for scenario in ('create', 'cleanup_resize', 'rescue'):
        assert 'disk.info' in instance_files(runs, 'own', backend, scenario)
        assert 'disk.info' in instance_files(runs, 'face', backend, scenario)
