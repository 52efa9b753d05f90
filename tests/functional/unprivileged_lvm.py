"""Lvm creation by an unprivileged process (collected only when named).

Run by tests/functional/test_unprivileged.py, as an unprivileged user, in
a pytest with tests/functional/unprivileged_plugin.py (the library's
privsep context started through ``sudo -n privsep-helper``). The volume
group was made by the root test on loop devices (tests/functional/
lvm_env.py); its name is ``IMAGEBACKEND_UNPRIV_VG``. The root test checks
afterwards, as root, that the LV exists with the size and bytes the
record claims, and stops the daemon by its PID.
"""

import json
import os
import subprocess

import imagebackend
from imagebackend import privileged
from imagebackend import processes
from imagebackend.backends import lvm
from tests.functional.conftest import run
from tests.hosts import Instance, MiB

VG = os.environ.get('IMAGEBACKEND_UNPRIV_VG', '')
IMAGE_SIZE = 16 * MiB
DISK_SIZE = 24 * MiB


def _uid_of(pid: int) -> int:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('Uid:'):
                return int(line.split()[1])
    raise AssertionError(f'no Uid line for {pid}')


def test_this_process_cannot_run_lvm_itself():
    assert os.geteuid() != 0
    probe = f'probe-{os.getpid()}'
    proc = subprocess.run(['lvcreate', '-y', '-L', '8m', '-n', probe, VG],
                          capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout
    # Not made behind its back either (asked as root, through the daemon).
    assert probe not in lvm.logical_volumes(VG)


def test_lvm_disk_is_created_through_the_privsep_daemon(host, tmp_path):
    daemon = privileged.pid()
    assert daemon is not None and daemon != os.getpid()
    assert _uid_of(daemon) == 0 and os.geteuid() != 0

    image = os.path.join(host.imagebackend.images_dir, 'img.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', image, str(IMAGE_SIZE))
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M',
        '-c', f'write -P 0x5a {8 * MiB} 64k', image)
    host.set_override('images_type', 'lvm', group='libvirt')
    host.set_override('images_volume_group', VG, group='libvirt')
    instance = Instance()
    disk = imagebackend.Backend(conf=host).by_name(instance, 'disk')

    sent = []
    real = privileged._entrypoint_for

    def spy(context, what='run_command'):
        entry = real(context, what)

        def call(*args):
            sent.append((what, args[0] if what == 'run_command' else args))
            return entry(*args)
        return call

    privileged._entrypoint_for = spy
    try:
        with processes.recording() as seen:
            disk.create_from_image(None, 'img', size=DISK_SIZE)
            assert disk.exists()
    finally:
        privileged._entrypoint_for = real

    record = disk.record
    assert record.created and record.backend == 'lvm'
    assert record.virtual_size == DISK_SIZE
    assert lvm.logical_volumes(VG)[disk.lv].size == DISK_SIZE
    # Every LVM command and the write into the LV went to the daemon.
    root_programs = [args[0] for what, args in sent
                     if what == 'run_command']
    assert 'lvcreate' in root_programs and 'qemu-img' in root_programs
    assert ('fsync_device', (disk.path,)) in sent
    for cmd in seen:
        if cmd[0] in ('vgs', 'lvs', 'lvcreate'):
            assert list(cmd) in [list(args) for what, args in sent
                                 if what == 'run_command']
    with open(os.environ['IMAGEBACKEND_UNPRIV_LVM_RESULT'], 'w') as f:
        json.dump({'vg': VG, 'lv': disk.lv, 'size': DISK_SIZE,
                   'path': disk.path, 'image': image}, f)
