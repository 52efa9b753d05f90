"""Nova's real LibvirtDriver making an instance's disks, on the library's face.

Run with the Nova virtualenv (.venv-nova/bin/python, PYTHONPATH=<repo root>):

    python tests/nova/nova_driver_scenarios.py [--own] --json OUT \
        [--backends flat,qcow2,ploop,flat-qcow2] [--instance-uuid UUID] \
        [--lvm-vg VG] [--rbd-conf CEPH_CONF --rbd-pool POOL] \
        [--stage make|finish --dir DIR]

Without ``--own`` the library's face (imagebackend.nova) is put in place of
``nova.virt.libvirt.imagebackend`` by imagebackend.nova_swap.install()
before anything imports Nova's libvirt package; with ``--own`` Nova's own
module runs (the baseline the face is compared with).

Nova's driver is built as Nova's unit tests build it (nova.test.NoDBTestCase,
``LibvirtFixture``/fakelibvirt, privsep in-process through
``PrivsepFixture``), on a real instances_path in a temp dir. Only Glance
(its download writes a real qcow2 image made by qemu-img), the instance's
DB reads and writes (save, its BDMs, VIFs, share mappings, EC2 ids) and
Neutron's security groups are stubbed; the network is empty. Every disk is
made by the image backend with the real qemu-img, cp, mkfs, mkswap,
genisoimage, ploop, LVM or Ceph.

For each backend, one instance goes through, in order:

* ``construct``: ``LibvirtDriver(FakeVirtAPI(), False)``;
* ``create``: spawn's disk steps: ``_create_image`` (root from the image,
  ephemeral, swap), ``_get_guest_xml``, ``_create_guest_with_network`` (on
  fakelibvirt) with ``_create_configdrive`` as its post-XML callback; the
  XML is then defined on libvirt's real test driver (``test:///default``,
  the real libvirt module, not the fakelibvirt Nova's fixture installs);
* ``warm_create`` (flat, qcow2): ``_create_image`` of a second instance,
  every base cached now; records the processes it started (Nova's or the
  library's);
* ``pre_live_migration``: ``pre_live_migration`` (so
  ``_create_images_and_backing``) on a second host's instances_path, with
  the disk_info Nova's source sends (``_get_instance_disk_info_from_config``)
  and is_shared_block_storage as the source decides it;
* ``resize``: ``migrate_disk_and_power_off`` (same host) then
  ``finish_migration`` with a bigger flavor, its XML defined on test:///;
* ``cleanup_resize``: ``_cleanup_resize``;
* ``rescue``: ``rescue`` (``_create_image`` with suffix '.rescue'), its XML
  defined on test:///;
* ``instance_on_disk``.

Mixed hosts (``--stage make`` then ``--stage finish`` on one ``--dir``, each
run on either module): ``make`` runs construct and create only and leaves
the instance directory (and the domain's XML) in DIR/<backend>; ``finish``
takes it up: it defines that domain again on its fakelibvirt (the host's
libvirt would still hold it), then ``pre_live_migration``, ``resize`` as
above and ``instance_on_disk``; it records the files it found as ``taken_up``.

Writes JSON: {backend: {'image': {'sha256'}, scenario: {'call': 'ok' |
{'error', 'message', 'traceback'}, 'define', 'result', 'files', 'disks':
{name: {'info': qemu-img info (+ 'data-sha256' of the first 64 MiB the
guest reads, for disks made from the image), 'xml': <disk>}}}}} with the
temp paths replaced by $INSTANCES / $DEST / $WORK, the instance's uuid by
$UUID, the volume group by $VG.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ET

IMAGE_ID = '155d900f-4e14-4e4c-a73d-069cbf4541e6'
INSTANCE_UUID = '6b2f5a34-bd6c-4b3b-8c4e-2b8d3f2f0a10'
WARM_UUID = '3f0e6c1a-77d2-4c8e-9b1a-5d4e2f6a8c90'
# Backends whose disks are all files in the instance directory (removed
# with it) and that the warm_create step covers.
WARM_BACKENDS = ('flat', 'qcow2')
IMAGE_MB = 64
MiB = 1024 * 1024


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--own', action='store_true',
                        help="Nova's own module (baseline)")
    parser.add_argument('--json', required=True, help='write results here')
    parser.add_argument('--backends', default='flat,qcow2,ploop')
    parser.add_argument('--instance-uuid', default=INSTANCE_UUID,
                        help='(two runs sharing a VG or pool differ here)')
    parser.add_argument('--lvm-vg', help='[libvirt] images_volume_group')
    parser.add_argument('--rbd-conf', help='[libvirt] images_rbd_ceph_conf')
    parser.add_argument('--rbd-pool', help='[libvirt] images_rbd_pool')
    parser.add_argument('--stage', choices=('all', 'make', 'finish'),
                        default='all',
                        help="mixed hosts: 'make' only creates the "
                        "instance in --dir and leaves it; 'finish' resizes "
                        "the instance a 'make' run left there")
    parser.add_argument('--dir', help="the work directory a 'make' run "
                        "leaves and a 'finish' run takes up (one "
                        "subdirectory per backend)")
    args = parser.parse_args(argv)
    if (args.stage == 'all') != (args.dir is None):
        parser.error("--dir goes with --stage make or finish")
    return args


ARGS = parse_args()
if not ARGS.own:
    import imagebackend.nova_swap
    imagebackend.nova_swap.install()

# The real libvirt module, imported before Nova's test fixtures poison its
# import and swap Nova's references to it for fakelibvirt.
import libvirt as real_libvirt  # noqa: E402

import fixtures  # noqa: E402

import nova.conf  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova.network import model as network_model  # noqa: E402
from nova import objects  # noqa: E402
from nova import test  # noqa: E402
from nova.tests import fixtures as nova_fixtures  # noqa: E402
from nova.tests.unit.virt.libvirt import test_driver  # noqa: E402
from nova.virt import fake  # noqa: E402
from nova.virt.libvirt import blockinfo  # noqa: E402
from nova.virt.libvirt import config as vconfig  # noqa: E402
from nova.virt.libvirt import driver as libvirt_driver  # noqa: E402
from nova.virt.libvirt import utils as libvirt_utils  # noqa: E402

from benchmarks import nova_glance, process_log  # noqa: E402

CONF = nova.conf.CONF
# Every process started, by Nova or the library (see _warm_create); after
# Nova's imports, which monkey-patch subprocess (eventlet).
PROCESSES = process_log.install()
RESULTS: dict = {}


def qemu_img(*args) -> str:
    return subprocess.run(['qemu-img', *args], check=True,
                          capture_output=True, text=True).stdout


def make_image(work: str) -> tuple[str, str]:
    """A real qcow2 image with some data, as Glance would serve it; and
    the sha256 of its guest-visible bytes."""
    raw = os.path.join(work, 'image.raw')
    with open(raw, 'wb') as f:
        f.truncate(IMAGE_MB * MiB)
        f.seek(MiB)
        f.write(b'imagebackend nova driver scenario\n' * 100)
    with open(raw, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    path = os.path.join(work, 'image.qcow2')
    qemu_img('convert', '-f', 'raw', '-O', 'qcow2', raw, path)
    os.unlink(raw)
    return path, digest


class Paths:
    """Temp paths -> stable names, so two runs compare."""

    def __init__(self):
        self.subst: list[tuple[str, str]] = []

    def add(self, path, name):
        if os.path.isabs(path):
            self.subst.append((os.path.realpath(path), name))
        self.subst.append((path, name))
        self.subst.sort(key=lambda s: -len(s[0]))

    def __call__(self, value):
        if isinstance(value, str):
            for path, name in self.subst:
                value = value.replace(path, name)
            return value
        if isinstance(value, dict):
            return {self(k): self(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self(v) for v in value]
        return value


def disk_elements(xml: str) -> list[ET.Element]:
    return ET.fromstring(xml).findall('./devices/disk')


def guest_sha256(spec: str, fmt: str) -> str:
    """sha256 of the first IMAGE_MB MiB the guest reads from a disk."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'head.raw')
        qemu_img('dd', '-f', fmt, '-O', 'raw', 'bs=1M', f'count={IMAGE_MB}',
                 f'if={spec}', f'of={out}')
        with open(out, 'rb') as f:
            return hashlib.sha256(f.read()).hexdigest()


def made_from_image(name: str) -> bool:
    """Is this disk made from the image (the guest must read the image's
    bytes there)? File names 'disk', 'disk.rescue'; LVs and RBD images
    '<uuid>_disk', '<uuid>_disk.rescue'."""
    return name.rsplit('_', 1)[-1] in ('disk', 'disk.rescue')


def qemu_info(path: str, fmt: str) -> dict:
    """``qemu-img info`` of a disk as its XML describes it."""
    extra = {}
    from_image = made_from_image(os.path.basename(path))
    if fmt == 'ploop':
        # A ploop disk is a directory: root.hds, whose format its
        # DiskDescriptor.xml gives (Plain: raw; else parallels).
        if not os.path.isdir(path):
            extra['ploop'] = 'not a directory'
            fmt = 'raw'
        else:
            descriptor = os.path.join(path, 'DiskDescriptor.xml')
            kind = (ET.parse(descriptor).findtext('.//Storage/Image/Type')
                    if os.path.exists(descriptor) else None)
            extra['ploop'] = kind or 'no DiskDescriptor.xml'
            path = os.path.join(path, 'root.hds')
            fmt = 'raw' if kind == 'Plain' else 'parallels'
    if not os.path.exists(path):
        return dict(extra, missing=path)
    try:
        out = qemu_img('info', '--output=json', '-U', '-f', fmt, path)
    except subprocess.CalledProcessError as e:
        return dict(extra, error=e.stderr.strip())
    info = json.loads(out)
    with open(path, 'rb') as f:
        # What the bytes are, whatever the XML says (a raw disk that holds
        # a qcow2 header would hand the guest qcow2 metadata).
        info['qcow2-magic'] = f.read(4) == b'QFI\xfb'
    for volatile in ('actual-size', 'dirty-flag', 'children', 'cluster-size',
                     'format-specific'):
        info.pop(volatile, None)
    if from_image:
        info['data-sha256'] = guest_sha256(path, fmt)
    return dict(info, **extra)


def rbd_info(name: str) -> dict:
    """What ``rbd info`` says of an RBD disk, in qemu-img info's terms."""
    try:
        out = subprocess.run(
            ['rbd', '--conf', ARGS.rbd_conf, 'info', '--format', 'json',
             name], check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as e:
        return {'error': e.stderr.strip()}
    info = json.loads(out)
    parent = info.get('parent') or {}
    view = {'format': 'raw', 'virtual-size': info['size']}
    if parent:
        view['backing-filename'] = '{pool}/{image}@{snapshot}'.format(
            **parent)
    if made_from_image(name):
        # librbd, read-only (this qemu-img has no rbd driver).
        import rados
        import rbd
        pool, image = name.split('/', 1)
        with rados.Rados(conffile=ARGS.rbd_conf) as cluster:
            with cluster.open_ioctx(pool) as ioctx:
                with rbd.Image(ioctx, image, read_only=True) as disk:
                    head = disk.read(0, min(IMAGE_MB * MiB, disk.size()))
        view['data-sha256'] = hashlib.sha256(head).hexdigest()
    return view


# Mixed hosts: what the guest writes on the first host and must read back
# after the other host's resize (1 MiB of 0x5a, past the image's bytes and
# clear of a 1 GiB ext4's metadata).
GUEST_WRITE = ('0x5a', 1000 * MiB, MiB)
GUEST_DISKS = ('vda', 'vdb')


def guest_file(path: str, fmt: str) -> tuple[str, str]:
    """The file and qemu format the guest's I/O goes to for a disk."""
    if fmt != 'ploop' or not os.path.isdir(path):
        return path, 'raw' if fmt == 'ploop' else fmt
    kind = ET.parse(os.path.join(path, 'DiskDescriptor.xml')).findtext(
        './/Storage/Image/Type')
    return (os.path.join(path, 'root.hds'),
            'raw' if kind == 'Plain' else 'parallels')


def guest_io(xml: str, op: str) -> dict:
    """The guest writes GUEST_WRITE to, or reads and checks it from, each
    of GUEST_DISKS of a domain (qemu-io through the disk's format)."""
    pattern, offset, length = GUEST_WRITE
    done = {}
    for el in disk_elements(xml):
        target = el.find('target').get('dev')
        if target not in GUEST_DISKS:
            continue
        path, fmt = guest_file(el.find('source').get('file'),
                               el.find('driver').get('type'))
        run = subprocess.run(
            ['qemu-io', '-f', fmt, '-c',
             f'{op} -P {pattern} {offset} {length}', path],
            capture_output=True, text=True)
        out = run.stdout + run.stderr
        done[target] = (run.returncode == 0 and 'fail' not in out.lower()
                        or out.strip()[-300:])
    return done


def describe_xml(xml: str) -> dict:
    """Each <disk> of a domain XML with qemu-img info of its file."""
    disks = {}
    for el in disk_elements(xml):
        target = el.find('target').get('dev')
        source = el.find('source')
        driver = el.find('driver')
        fmt = driver.get('type') if driver is not None else None
        path = None
        if source is not None:
            path = source.get('file') or source.get('dev')
        entry = {'xml': ET.tostring(el, encoding='unicode').strip()}
        if path and fmt:
            entry['info'] = qemu_info(path, fmt)
        elif source is not None and source.get('protocol') == 'rbd':
            entry['info'] = rbd_info(source.get('name'))
        disks[target] = entry
    return disks


def describe_disk_info(instance_dir: str, disk_info: list[dict]) -> dict:
    """qemu-img info of each disk Nova's disk_info names, in instance_dir."""
    disks = {}
    for info in disk_info:
        name = os.path.basename(info['path'])
        disks[name] = {'info': qemu_info(os.path.join(instance_dir, name),
                                         info['type'])}
    return disks


def tree(top: str) -> dict:
    """{relative path: size} of the files under top."""
    found = {}
    for dirpath, _, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, top)] = os.path.getsize(path)
    return found


def define_on_test_driver(xml: str) -> str:
    """Define the domain on libvirt's real test driver; its name."""
    conn = real_libvirt.open('test:///default')
    try:
        dom = conn.defineXML(xml)
        name = dom.name()
        dom.undefine()
        return name
    finally:
        conn.close()


def error_of(e: BaseException) -> dict:
    return {'error': f'{type(e).__module__}.{type(e).__name__}',
            'message': str(e)[:500],
            'traceback': traceback.format_exc()[-3000:]}


class DriverScenarios(test.NoDBTestCase):
    """One instance through Nova's driver, per backend (see module doc)."""

    backend = 'flat'

    def setUp(self):
        super().setUp()
        if ARGS.dir:
            # Mixed hosts: the instance outlives this process.
            self.work = os.path.join(os.path.abspath(ARGS.dir), self.backend)
        else:
            self.work = self.useFixture(fixtures.TempDir()).path
        self.src = os.path.join(self.work, 'instances')
        self.dest = os.path.join(self.work, 'dest')
        os.makedirs(self.src, exist_ok=True)
        os.makedirs(self.dest, exist_ok=True)
        self.paths = Paths()
        self.paths.add(self.src, '$INSTANCES')
        self.paths.add(self.dest, '$DEST')
        self.paths.add(self.work, '$WORK')
        self.paths.add(ARGS.instance_uuid, '$UUID')
        if ARGS.lvm_vg:
            self.paths.add(ARGS.lvm_vg, '$VG')
        self.flags(instances_path=self.src)
        self.flags(lock_path=os.path.join(self.work, 'locks'),
                   group='oslo_concurrency')
        # 'flat-qcow2': a flat host with force_raw_images off, whose root
        # disk is the qcow2 image copied (only Nova's disk.info says so).
        images_type = self.backend.split('-')[0]
        self.flags(images_type=images_type, virt_type='kvm',
                   group='libvirt')
        self.flags(force_raw_images=self.backend != 'flat-qcow2')
        # A flat host is a raw host: with use_cow_images on, Nova's
        # finish_migration converts its raw disks to qcow2 in place.
        self.flags(use_cow_images=images_type != 'flat')
        if ARGS.lvm_vg:
            self.flags(images_volume_group=ARGS.lvm_vg, group='libvirt')
        if ARGS.rbd_conf:
            self.flags(images_rbd_ceph_conf=ARGS.rbd_conf, group='libvirt')
        if ARGS.rbd_pool:
            self.flags(images_rbd_pool=ARGS.rbd_pool, group='libvirt')
        self.useFixture(nova_fixtures.LibvirtFixture())
        self.useFixture(nova_fixtures.CGroupsFixture())
        self.useFixture(nova_fixtures.PrivsepFixture())
        self.stub_out('nova.objects.InstanceList.get_by_host',
                      lambda *a, **k: objects.InstanceList(objects=[]))
        self._stub_glance()
        # DB writes and reads of the instance (no DB in a unit test).
        self.stub_out('nova.objects.Instance.save', lambda *a, **k: None)
        self.stub_out('nova.objects.BlockDeviceMappingList.'
                      'get_by_instance_uuid',
                      lambda *a, **k: objects.BlockDeviceMappingList())
        self.stub_out('nova.objects.VirtualInterfaceList.'
                      'get_by_instance_uuid',
                      lambda *a, **k: objects.VirtualInterfaceList())
        self.stub_out('nova.objects.ShareMappingList.get_by_instance_uuid',
                      lambda *a, **k: objects.ShareMappingList())
        self.stub_out('nova.objects.EC2Ids.get_by_instance',
                      lambda *a, **k: objects.EC2Ids(
                          instance_id='i-00000001', ami_id='ami-00000001',
                          kernel_id=None, ramdisk_id=None))
        # Neutron reads (the config drive's security groups).
        self.stub_out('nova.network.security_group_api.'
                      'get_instance_security_groups', lambda *a, **k: [])
        self.context = nova_context.get_admin_context()

    def _stub_glance(self):
        image, digest = make_image(self.work)
        RESULTS.setdefault(self.backend, {})['image'] = {'sha256': digest}
        nova_glance.stub_glance(self, IMAGE_ID, image, 'scenario',
                                IMAGE_MB * MiB)

    # -- helpers ---------------------------------------------------------

    def _instance(self):
        values = test_driver._create_test_instance()
        flavor = values['flavor']
        flavor.root_gb, flavor.ephemeral_gb, flavor.swap = 1, 1, 32
        values.update(root_gb=1, ephemeral_gb=1, config_drive='True',
                      host=CONF.host, node='fake-node',
                      # What the compute manager sets before spawn, and
                      # the metadata the config drive reads.
                      root_device_name='/dev/vda',
                      default_ephemeral_device='/dev/vdb',
                      default_swap_device='/dev/vdc', metadata={},
                      key_data=None, key_name=None, launch_index=0,
                      hostname='scenario', reservation_id='r-scenario',
                      availability_zone=None, user_data=None,
                      display_description=None, launched_at=None,
                      security_groups=objects.SecurityGroupList(),
                      keypairs=objects.KeyPairList(), tags=objects.TagList(),
                      device_metadata=None, services=objects.ServiceList())
        values['uuid'] = ARGS.instance_uuid
        values['info_cache'] = objects.InstanceInfoCache(
            network_info=network_model.NetworkInfo([]))
        instance = objects.Instance(**values)
        instance.ec2_ids = objects.EC2Ids(
            instance_id='i-00000001', ami_id='ami-00000001',
            kernel_id=None, ramdisk_id=None)
        instance.old_flavor = None
        instance.new_flavor = None
        return instance

    def _run(self, name, func):
        """Run one scenario step; record its result or exception."""
        entry = RESULTS[self.backend].setdefault(name, {})
        try:
            result = func()
        except Exception as e:
            entry['call'] = error_of(e)
            return None
        entry['call'] = 'ok'
        return result

    def _record(self, name, **fields):
        RESULTS[self.backend].setdefault(name, {}).update(
            self.paths(fields))

    # -- the scenarios -----------------------------------------------------

    def test_scenarios(self):
        drvr = self._run('construct', lambda: libvirt_driver.LibvirtDriver(
            fake.FakeVirtAPI(), False))
        if drvr is None:
            return
        self._record('construct',
                     result=type(drvr.image_backend).__module__)
        xmls = self.xmls = []
        real_get_guest_xml = drvr._get_guest_xml

        def get_guest_xml(*args, **kwargs):
            xml = real_get_guest_xml(*args, **kwargs)
            xmls.append(xml)
            return xml
        drvr._get_guest_xml = get_guest_xml

        instance = self._instance()
        image_meta = objects.ImageMeta.from_dict(
            {'id': IMAGE_ID, 'disk_format': 'qcow2', 'properties': {}})
        network_info = network_model.NetworkInfo([])
        if ARGS.stage == 'finish':
            self._finish(drvr, instance, image_meta, network_info)
            return
        injection_info = libvirt_driver.InjectionInfo(
            network_info=network_info, files=[], admin_pass=None)
        disk_info = blockinfo.get_disk_info('kvm', instance, image_meta)

        def create():
            # spawn()'s disk steps: images, XML, the domain defined (on
            # fakelibvirt), then the config drive as its post-XML callback.
            drvr._create_image(self.context, instance, disk_info['mapping'],
                               injection_info=injection_info)
            xml = drvr._get_guest_xml(self.context, instance, network_info,
                                      disk_info, image_meta)
            drvr._create_guest_with_network(
                self.context, xml, instance, network_info, None,
                power_on=True, vifs_already_plugged=True,
                post_xml_callback=lambda: drvr._create_configdrive(
                    self.context, instance, injection_info))
            return xml
        xml = self._run('create', create)
        if xml is None:
            return
        self._run_define('create', xml)
        self._record('create', disks=describe_xml(xml),
                     files=sorted(os.listdir(
                         libvirt_utils.get_instance_path(instance))))
        if ARGS.stage == 'make':
            self._record('create', guest_wrote=guest_io(xml, 'write'))
            # The host's libvirt keeps the domain: the 'finish' run finds it.
            with open(os.path.join(self.work, 'domain.xml'), 'w') as f:
                f.write(xml)
            return

        if self.backend in WARM_BACKENDS:
            self._warm_create(drvr, image_meta)
        self._pre_live_migration(drvr, instance, xml)
        self._resize(drvr, instance, image_meta, network_info)
        self._run('cleanup_resize', lambda: drvr._cleanup_resize(
            self.context, instance, network_info))
        inst_dir = libvirt_utils.get_instance_path(instance)
        self._record('cleanup_resize',
                     result=os.path.exists(inst_dir + '_resize'),
                     files=sorted(os.listdir(inst_dir)))
        self._rescue(drvr, instance, image_meta, network_info, xmls)
        on_disk = self._run('instance_on_disk',
                            lambda: drvr.instance_on_disk(instance))
        self._record('instance_on_disk', result=on_disk)
        # What the calls left running (a Ceph client nobody shut down
        # keeps its threads); collected first, so only what is still
        # referenced counts.
        gc.collect()
        self._record('threads', result=len(os.listdir('/proc/self/task')))

    def _warm_create(self, drvr, image_meta):
        """A second instance's disks (``_create_image``), every base now
        cached: the processes started meanwhile (Nova's and the library's),
        as :mod:`benchmarks.process_log` names them. The instance is
        removed again."""
        instance = self._instance()
        instance.uuid = WARM_UUID
        disk_info = blockinfo.get_disk_info('kvm', instance, image_meta)
        started = len(PROCESSES)
        self._run('warm_create', lambda: drvr._create_image(
            self.context, instance, disk_info['mapping']))
        self._record('warm_create', commands=PROCESSES[started:])
        shutil.rmtree(libvirt_utils.get_instance_path(instance))

    def _finish(self, drvr, instance, image_meta, network_info):
        """Mixed hosts: take up the instance a 'make' run left (perhaps
        on the other module), resize it to the bigger flavor, define its
        XML, ask instance_on_disk."""
        inst_dir = libvirt_utils.get_instance_path(instance)
        self._record('taken_up', files=sorted(os.listdir(inst_dir)))
        # The domain the 'make' run left in the host's libvirt (a fresh
        # fakelibvirt here), as the host's libvirt would still hold it.
        with open(os.path.join(self.work, 'domain.xml')) as f:
            domain_xml = f.read()
        drvr._host.get_connection().defineXML(domain_xml).create()
        # Block live migration to a second host on this run's module.
        self._pre_live_migration(drvr, instance, domain_xml)
        self._resize(drvr, instance, image_meta, network_info)
        self._record('resize', files=sorted(os.listdir(inst_dir)))
        if self.xmls:
            self._record('resize', guest_read=guest_io(self.xmls[-1], 'read'))
        on_disk = self._run('instance_on_disk',
                            lambda: drvr.instance_on_disk(instance))
        self._record('instance_on_disk', result=on_disk)

    def _pre_live_migration(self, drvr, instance, xml):
        guest_config = vconfig.LibvirtConfigGuest()
        guest_config.parse_str(xml)
        # What Nova's source host sends (get_instance_disk_info).
        disk_info = drvr._get_instance_disk_info_from_config(
            guest_config, None)
        # As the source's check_can_live_migrate_source decides it for a
        # destination on the same images_type.
        shared_block = drvr.image_backend.backend().is_shared_block_storage()
        migrate_data = objects.LibvirtLiveMigrateData(
            is_shared_block_storage=shared_block, is_shared_instance_path=False,
            block_migration=True, instance_relative_path=instance.uuid,
            serial_listen_addr=None, graphics_listen_addr_vnc='127.0.0.1',
            graphics_listen_addr_spice='127.0.0.1')
        self.flags(instances_path=self.dest)
        try:
            self._run('pre_live_migration', lambda: drvr.pre_live_migration(
                self.context, instance, None, network_model.NetworkInfo([]),
                json.dumps(disk_info), migrate_data))
            dest_dir = libvirt_utils.get_instance_path(instance)
            self._record('pre_live_migration', source_disk_info=disk_info,
                         disks=describe_disk_info(dest_dir, disk_info),
                         files=sorted(os.listdir(dest_dir))
                         if os.path.isdir(dest_dir) else None)
        finally:
            self.flags(instances_path=self.src)

    def _resize(self, drvr, instance, image_meta, network_info):
        new_flavor = copy.deepcopy(instance.flavor)
        new_flavor.root_gb, new_flavor.ephemeral_gb = 2, 2
        new_flavor.id, new_flavor.flavorid = 3, '2'
        migration = objects.Migration(
            source_compute=CONF.host, dest_compute=CONF.host,
            source_node='fake-node', dest_node='fake-node',
            migration_type='resize', status='migrating')

        # The compute manager's prep_resize.
        instance.old_flavor = instance.flavor
        instance.new_flavor = new_flavor

        def resize():
            disk_info = drvr.migrate_disk_and_power_off(
                self.context, instance, CONF.my_ip, new_flavor, network_info)
            self._record('resize', source_disk_info=json.loads(disk_info),
                         tree_before=tree(libvirt_utils.get_instance_path(
                             instance)))
            # The compute manager's finish_resize before the driver's.
            instance.flavor = new_flavor
            instance.root_gb, instance.ephemeral_gb = 2, 2
            drvr.finish_migration(
                self.context, migration, instance, disk_info, network_info,
                image_meta, True, {}, None, power_on=False)
        before = len(self.xmls)
        self._run('resize', resize)
        xmls = self.xmls
        if len(xmls) > before:
            xml = xmls[-1]
            self._run_define('resize', xml)
            self._record('resize', disks=describe_xml(xml))

    def _run_define(self, name, xml):
        try:
            define_on_test_driver(xml)
        except Exception as e:
            self._record(name, define=error_of(e))
        else:
            self._record(name, define='ok')

    def _rescue(self, drvr, instance, image_meta, network_info, xmls):
        before = len(xmls)
        self._run('rescue', lambda: drvr.rescue(
            self.context, instance, network_info, image_meta, None, None,
            None))
        if len(xmls) > before:
            xml = xmls[-1]
            self._run_define('rescue', xml)
            self._record('rescue', disks=describe_xml(xml), files=sorted(
                os.listdir(libvirt_utils.get_instance_path(instance))))


def main() -> int:
    import unittest
    for backend in ARGS.backends.split(','):
        case_class = type(f'DriverScenarios_{backend}', (DriverScenarios,),
                          {'backend': backend})
        case = case_class('test_scenarios')
        result = unittest.TestResult()
        case.run(result)
        for _, tb in result.errors + result.failures:
            RESULTS.setdefault(backend, {})['harness_error'] = tb[-3000:]
            print(tb, file=sys.stderr)
    with open(ARGS.json, 'w') as f:
        json.dump(RESULTS, f, indent=1, sort_keys=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
