"""A child process for the nova_driver suite, run by .venv-nova's Python.

Nova's real ``LibvirtDriver`` (built as Nova's unit tests build it:
``nova.test.NoDBTestCase``, ``LibvirtFixture``/fakelibvirt, privsep in
process) makes instances' disks with ``_create_image`` on a real
instances_path, on Nova's own ``nova.virt.libvirt.imagebackend``
(``--own``) or on the library's face put in its place
(:func:`imagebackend.nova_swap.install`). Only Glance is stubbed: its
download copies a local image file.

It serves requests, one JSON object a line on stdin, one JSON answer a
line on the protocol's stdout (its own stdout is sent to stderr, so that
nothing Nova prints gets in the way), so a parent can interleave two of
them (Nova's module, the face)::

    {"op": "make", "cold": false}  -> {"seconds", "backend_seconds",
                                       "commands"}
    {"op": "quit"}

``make`` times one ``_create_image`` of a new instance (root from the
image grown to the flavor's root, ephemeral, swap); ``cold`` runs it on a
fresh instances_path (an empty image cache: the fetch and the templates
are made too), else on the previous one. ``backend_seconds`` is the time
spent inside the image backend's entry points (``Backend.by_name``,
``Image.cache``, ``Image.exists``); ``commands`` every process started
(:mod:`benchmarks.process_log`). The instance (a cold
run: its whole instances_path) is removed after the timing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
import uuid as uuid_mod


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--own', action='store_true',
                   help="Nova's own image backend module")
    p.add_argument('--backend', choices=('qcow2', 'flat'), required=True)
    p.add_argument('--image', required=True,
                   help='the qcow2 file Glance serves')
    p.add_argument('--image-virtual', type=int, required=True)
    p.add_argument('--flavor', required=True,
                   help='root GiB,ephemeral GiB,swap MiB')
    p.add_argument('--work', required=True, help='a directory to work in')
    return p.parse_args(argv)


ARGS = parse_args()
# The protocol's channel; fd 1 then goes to stderr.
PROTOCOL = os.fdopen(os.dup(1), 'w', buffering=1)
os.dup2(2, 1)
if not ARGS.own:
    import imagebackend.nova_swap
    imagebackend.nova_swap.install()

from benchmarks import nova_glance, process_log  # noqa: E402

from nova import context as nova_context  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova import objects  # noqa: E402
from nova import test  # noqa: E402
from nova.tests import fixtures as nova_fixtures  # noqa: E402
from nova.tests.unit.virt.libvirt import test_driver  # noqa: E402
from nova.virt import fake  # noqa: E402
from nova.virt.libvirt import blockinfo  # noqa: E402
from nova.virt.libvirt import driver as libvirt_driver  # noqa: E402

IMAGE_ID = '155d900f-4e14-4e4c-a73d-069cbf4541e6'
BACKEND_MODULE = sys.modules['nova.virt.libvirt.imagebackend']

# -- what is measured besides the time -----------------------------------------

COMMANDS = process_log.install()

IN_BACKEND = {'seconds': 0.0, 'depth': 0}


def _timed(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        IN_BACKEND['depth'] += 1
        t0 = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            IN_BACKEND['depth'] -= 1
            if not IN_BACKEND['depth']:
                IN_BACKEND['seconds'] += time.perf_counter() - t0
    return wrapper


def _time_backend_entry_points() -> None:
    """Time what Nova's driver calls on its image backend module."""
    BACKEND_MODULE.Backend.by_name = _timed(BACKEND_MODULE.Backend.by_name)
    for cls in (BACKEND_MODULE.Qcow2, BACKEND_MODULE.Flat):
        for name in ('cache', 'exists'):
            setattr(cls, name, _timed(getattr(cls, name)))


# -- Nova's driver, as its unit tests build it ------------------------------------

class Host(test.NoDBTestCase):
    """Fixtures and stubs for one driver; setUp() is called by hand."""

    def runTest(self):  # unittest wants one
        pass

    def setUp(self):
        super().setUp()
        root_gb, eph_gb, swap_mb = (int(x) for x in ARGS.flavor.split(','))
        self.flavor_sizes = root_gb, eph_gb, swap_mb
        self.flags(lock_path=os.path.join(ARGS.work, 'locks'),
                   group='oslo_concurrency')
        self.flags(images_type=ARGS.backend, virt_type='kvm',
                   group='libvirt')
        self.flags(use_cow_images=ARGS.backend != 'flat')
        self.useFixture(nova_fixtures.LibvirtFixture())
        self.useFixture(nova_fixtures.CGroupsFixture())
        self.useFixture(nova_fixtures.PrivsepFixture())
        self.stub_out('nova.objects.InstanceList.get_by_host',
                      lambda *a, **k: objects.InstanceList(objects=[]))
        nova_glance.stub_glance(self, IMAGE_ID, ARGS.image, 'bench',
                                ARGS.image_virtual)
        self.context = nova_context.get_admin_context()
        self.paths = 0
        self.new_instances_path()
        self.drvr = libvirt_driver.LibvirtDriver(fake.FakeVirtAPI(), False)
        self.image_meta = objects.ImageMeta.from_dict(
            {'id': IMAGE_ID, 'disk_format': 'qcow2', 'properties': {}})

    def new_instances_path(self) -> None:
        self.paths += 1
        self.instances_path = os.path.join(ARGS.work,
                                           f'instances{self.paths}')
        os.makedirs(self.instances_path)
        self.flags(instances_path=self.instances_path)

    def instance(self):
        root_gb, eph_gb, swap_mb = self.flavor_sizes
        values = test_driver._create_test_instance()
        flavor = values['flavor']
        flavor.root_gb, flavor.ephemeral_gb, flavor.swap = (root_gb, eph_gb,
                                                            swap_mb)
        values.update(root_gb=root_gb, ephemeral_gb=eph_gb,
                      config_drive=None, uuid=str(uuid_mod.uuid4()),
                      root_device_name='/dev/vda',
                      default_ephemeral_device='/dev/vdb',
                      default_swap_device='/dev/vdc')
        values['info_cache'] = objects.InstanceInfoCache(
            network_info=network_model.NetworkInfo([]))
        return objects.Instance(**values)

    def make(self, cold: bool) -> dict:
        if cold:
            self.new_instances_path()
        instance = self.instance()
        disk_info = blockinfo.get_disk_info('kvm', instance, self.image_meta)
        del COMMANDS[:]
        IN_BACKEND['seconds'] = 0.0
        t0 = time.perf_counter()
        self.drvr._create_image(self.context, instance, disk_info['mapping'])
        seconds = time.perf_counter() - t0
        answer = {'seconds': seconds, 'backend_seconds': IN_BACKEND['seconds'],
                  'commands': list(COMMANDS)}
        if cold:
            shutil.rmtree(self.instances_path)
        else:
            shutil.rmtree(os.path.join(self.instances_path, instance.uuid))
        return answer


def main() -> int:
    host = Host()
    host.setUp()
    _time_backend_entry_points()
    try:
        PROTOCOL.write(json.dumps({'ready': BACKEND_MODULE.__name__}) + '\n')
        for line in sys.stdin:
            request = json.loads(line)
            if request['op'] == 'quit':
                break
            answer = host.make(bool(request.get('cold')))
            PROTOCOL.write(json.dumps(answer) + '\n')
    finally:
        host.doCleanups()
    return 0


if __name__ == '__main__':
    sys.exit(main())
