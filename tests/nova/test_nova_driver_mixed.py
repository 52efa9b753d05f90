"""Mixed hosts through Nova's real LibvirtDriver (issue 10, point 4c).

An instance is made on one module and taken up on the other, in the same
instances_path, by two runs of tests/nova/nova_driver_scenarios.py in
.venv-nova (real Nova 34.0.0):

* ``--stage make``: ``_create_image`` (root from the image, ephemeral,
  swap, config drive), ``_get_guest_xml``, the domain defined on
  test:///default; the instance directory (Nova's disk.info only, on
  Nova's own module) and the domain's XML are left behind;
* ``--stage finish``: the host's libvirt still holds that domain (defined
  again on the run's fakelibvirt); the instance is resized to the bigger
  flavor (``migrate_disk_and_power_off`` + ``finish_migration``), the new
  XML defined on test:///default, ``instance_on_disk`` asked.

Directions: made by Nova's own module, resized by the library through the
face (a host moved to the library); made by the library, resized by Nova's
own module (a host moved back); and the all-Nova baseline both are
compared with (made and resized by Nova's own module).
"""

import json
import os

import pytest

from tests.nova.test_nova_driver import (
    GiB, IMAGE_SIZE, LIBRARY_FILES, MiB, NOVA_FAILS, PLOOP_DIR, RESIZED_EPHEMERAL, describe,
    disk_view, outcome, run_scenarios)
from tests.nova.test_nova_unittests import NOVA_PYTHON

# 'flat-qcow2': flat with force_raw_images off, the root disk the qcow2
# image copied; only Nova's disk.info tells its format.
BACKENDS = ('flat', 'qcow2', 'ploop', 'flat-qcow2')
# (root, ephemeral and swap) disk formats, as qemu-img info reads them.
FORMATS = {'flat': ('raw', 'raw', 'raw'),
           'qcow2': ('qcow2', 'qcow2', 'qcow2'),
           'ploop': ('raw', 'raw', 'raw'),      # root.hds, Plain
           'flat-qcow2': ('qcow2', 'raw', 'raw')}
EPHEMERAL = dict(RESIZED_EPHEMERAL, **{'flat-qcow2': 2 * GiB})
# direction -> (module that makes the instance, module that resizes it)
DIRECTIONS = {
    'own-then-face': ('own', 'face'),
    'face-then-own': ('face', 'own'),
    'own-then-own': ('own', 'own'),      # the all-Nova baseline
}
MIXED = ('own-then-face', 'face-then-own')

# (direction, backend, disk, field) -> why it differs from the all-Nova
# run, on purpose. The resize makes the swap disk again (on either
# module): the resizing module's kind of ploop swap disk, whoever made it;
# the ephemeral disk is kept, as its maker made it.
ON_PURPOSE = {
    ('face-then-own', 'ploop', 'vdb', 'ploop'): PLOOP_DIR,
    ('own-then-face', 'ploop', 'vdc', 'ploop'): PLOOP_DIR,
}


def run_stage(tmp, stage):
    procs = {}
    for direction, modules in DIRECTIONS.items():
        module = modules[0 if stage == 'make' else 1]
        procs[direction] = run_scenarios(
            tmp / f'{direction}-{stage}.json', module == 'own', BACKENDS,
            ('--stage', stage, '--dir', str(tmp / direction)))
    results = {}
    for direction, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-5000:]
        results[direction] = json.loads(
            (tmp / f'{direction}-{stage}.json').read_text())
        for backend in BACKENDS:
            assert 'harness_error' not in results[direction][backend], (
                direction, results[direction][backend]['harness_error'])
    return results


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
    """{direction: {'make': results, 'finish': results}}."""
    assert os.path.exists(NOVA_PYTHON), (
        'no .venv-nova: run tools/bootstrap.sh (tools/test.sh does)')
    tmp = tmp_path_factory.mktemp('novamixed')
    made = run_stage(tmp, 'make')
    finished = run_stage(tmp, 'finish')
    return {direction: {'make': made[direction],
                        'finish': finished[direction]}
            for direction in DIRECTIONS}


def params():
    return [(direction, backend) for direction in DIRECTIONS
            for backend in BACKENDS]


@pytest.mark.parametrize('direction,backend', params())
def test_instance_made_on_one_module_resized_on_the_other(
        mixed, direction, backend):
    maker, resizer = DIRECTIONS[direction]
    made = mixed[direction]['make'][backend]
    finished = mixed[direction]['finish'][backend]
    expected = {'own': 'nova.virt.libvirt.imagebackend',
                'face': 'imagebackend.nova'}
    assert made['construct']['result'] == expected[maker]
    assert finished['construct']['result'] == expected[resizer]
    assert outcome(made['create']) == 'ok', describe(made['create'])
    assert made['create']['define'] == 'ok'
    assert outcome(finished['resize']) == 'ok', describe(finished['resize'])
    # Nova's driver built a domain libvirt accepts from the taken-up disks.
    assert finished['resize']['define'] == 'ok'
    assert outcome(finished['instance_on_disk']) == 'ok'
    assert finished['instance_on_disk']['result'] is True
    # What the other module left is what this one took up.
    assert finished['taken_up']['files'] == made['create']['files']
    # What the guest wrote to its root and ephemeral disks on the first
    # module, it reads back after the other module's resize.
    assert made['create']['guest_wrote'] == {'vda': True, 'vdb': True}
    assert finished['resize']['guest_read'] == {'vda': True, 'vdb': True}


@pytest.mark.parametrize('direction,backend', params())
def test_resized_disks_are_what_the_bigger_flavor_asks(
        mixed, direction, backend):
    """2 GiB root with the image's data; the ephemeral as Nova's own
    resize leaves it (grown on flat, kept on qcow2 and ploop); 32 MiB
    swap; each in the format its XML gives (qemu-img info -f that format
    reads it)."""
    results = mixed[direction]['finish'][backend]
    disks = results['resize']['disks']
    size = {disk: view['info'].get('virtual-size')
            for disk, view in disks.items()}
    assert size == {'vda': 2 * GiB, 'vdb': EPHEMERAL[backend],
                    'vdc': 32 * MiB, 'hda': size['hda']}
    for disk, view in disks.items():
        info = view['info']
        assert 'error' not in info and 'missing' not in info, (disk, info)
    for disk, fmt in zip(('vda', 'vdb', 'vdc'), FORMATS[backend]):
        assert disks[disk]['info']['format'] == fmt, disk
        # A raw disk holds no qcow2 header the guest would read.
        assert disks[disk]['info']['qcow2-magic'] == (fmt == 'qcow2')
    assert disks['vda']['info']['data-sha256'] == results['image']['sha256']
    assert IMAGE_SIZE < 2 * GiB


@pytest.mark.parametrize('direction', MIXED)
@pytest.mark.parametrize('backend', BACKENDS)
def test_resized_disks_match_the_all_nova_run(mixed, direction, backend):
    """Disk by disk (qemu-img info, <disk> XML) as if Nova's own module
    had made and resized the instance."""
    mine = mixed[direction]['finish'][backend]['resize']['disks']
    novas = mixed['own-then-own']['finish'][backend]['resize']['disks']
    assert sorted(mine) == sorted(novas)
    differences = {}
    for disk in novas:
        a, b = disk_view(mine[disk]), disk_view(novas[disk])
        for field in b:
            if a[field] != b[field] and (
                    direction, backend, disk, field) not in ON_PURPOSE:
                differences[f'{disk} {field}'] = {direction: a[field],
                                                  'own-then-own': b[field]}
    assert not differences, json.dumps(differences, indent=1)
    stale = [key for key in ON_PURPOSE if key[:2] == (direction, backend)
             and disk_view(mine[key[2]])[key[3]]
             == disk_view(novas[key[2]])[key[3]]]
    assert not stale, f'no longer differs, remove from ON_PURPOSE: {stale}'


@pytest.mark.parametrize('direction,backend', params())
def test_taken_up_instance_block_live_migrates_as_novas(
        mixed, direction, backend):
    """pre_live_migration of the taken-up instance on a second host: the
    outcome, the disk_info the source sends and the disks made there as in
    the all-Nova run."""
    mine = mixed[direction]['finish'][backend]['pre_live_migration']
    novas = mixed['own-then-own']['finish'][backend]['pre_live_migration']
    expected = NOVA_FAILS.get((backend.split('-')[0], 'pre_live_migration'),
                              'ok')
    assert outcome(mine) == expected, describe(mine)
    assert outcome(novas) == expected, describe(novas)
    # The library's records beside Nova's files (LIBRARY_FILES).
    assert set(mine['files'] or ()) - LIBRARY_FILES == set(
        novas['files'] or ())
    sent = {key: [dict(disk) for disk in entry['source_disk_info']]
            for key, entry in (('mine', mine), ('novas', novas))}
    for disks in sent.values():
        for disk in disks:
            # Bytes allocated in the files: each module's own kind of file
            # for a ploop ephemeral or swap (PLOOP_DIR).
            del disk['disk_size'], disk['over_committed_disk_size']
    assert sent['mine'] == sent['novas']
    assert ({disk: disk_view(view) for disk, view in mine['disks'].items()}
            == {disk: disk_view(view)
                for disk, view in novas['disks'].items()})
