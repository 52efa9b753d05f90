"""The CLI on a host made by Nova's OWN module (issue 11, point 1).

Real Nova 34.0.0 (tests/nova_disk_helper.py, in its own virtualenv) makes
instances with its own imagebackend: Qcow2 roots and an ephemeral on
bases in ``_base``, Flat roots raw and qcow2. No records, only Nova's
disk.info. Then the real CLI, as a subprocess with a nova.conf for that
host, adopts them (``adopt --all``), finds them clean (``verify --all``),
and names every way they are broken afterwards.
"""

from __future__ import annotations

import json
import os
import uuid as uuid_mod

import pytest

from imagebackend import names
from tests.functional.conftest import host_cli, qemu_info, run
from tests.functional.test_nova_mixed_hosts import make_image, nova
from tests.functional.test_records_truth import guest_writes_qcow2_header
from tests.hosts import GiB, MiB

EPHEMERAL = 'ephemeral_1_0706d66'   # Nova's name for a 1 GiB vfat template
IMAGE_QCOW2_KEPT = 'img2'           # used with force_raw_images off
IMAGE_HOSTILE = 'img3'              # its base is replaced by a hostile one

NOVA_CONF = """\
[DEFAULT]
instances_path = {instances_path}
use_cow_images = {use_cow}
force_raw_images = True

[libvirt]
images_type = {images_type}

[oslo_concurrency]
lock_path = {instances_path}/locks
"""


def disk(cls, name, image=None, template=None, size=GiB):
    spec = {'cls': cls, 'name': name, 'size': size}
    if template:
        spec['template'] = template
    else:
        spec['image_id'] = image or 'img'
    return spec


class NovaHost:
    """An instances_path Nova's module filled, and its nova.conf."""

    def __init__(self, root, name, images_dir, images_type='default',
                 use_cow=True):
        self.instances_path = str(root / name / 'instances')
        os.makedirs(self.instances_path)
        self.images_dir = images_dir
        self.conf = str(root / name / 'nova.conf')
        with open(self.conf, 'w') as f:
            f.write(NOVA_CONF.format(instances_path=self.instances_path,
                                     use_cow=use_cow,
                                     images_type=images_type))
        self.instances: dict[str, str] = {}     # label -> uuid
        self.jobs: list[dict] = []

    def make(self, label, disks, force_raw=True):
        uuid = str(uuid_mod.uuid4())
        self.instances[label] = uuid
        self.jobs.append({'op': 'make', 'instances_path': self.instances_path,
                          'images_dir': self.images_dir, 'uuid': uuid,
                          'conf': {'force_raw_images': force_raw},
                          'disks': disks})

    def path(self, label, name='disk'):
        return os.path.join(self.instances_path, self.instances[label], name)

    def base(self, name):
        return os.path.join(self.instances_path, '_base', name)


@pytest.fixture(scope='module')
def nova_hosts(tmp_path_factory, repo_root):
    """Two hosts made by one run of Nova's module: ``good`` (every disk
    decidable) and ``odd`` (disks adopt must not decide)."""
    root = tmp_path_factory.mktemp('nova-host-cli')
    images_dir = str(root / 'images')
    os.makedirs(images_dir)
    make_image(images_dir)
    path = os.path.join(images_dir, f'{IMAGE_QCOW2_KEPT}.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', path, str(64 * MiB))
    good = NovaHost(root, 'good', images_dir)
    good.make('qcow2-eph', [disk('Qcow2', 'disk'),
                            disk('Qcow2', 'disk.local', template=EPHEMERAL)])
    good.make('qcow2', [disk('Qcow2', 'disk')])
    good.make('flat-raw', [disk('Flat', 'disk')])
    good.make('flat-qcow2', [disk('Flat', 'disk', IMAGE_QCOW2_KEPT)],
              force_raw=False)
    good.make('flat-eph', [disk('Flat', 'disk'),
                           disk('Flat', 'disk.local', template=EPHEMERAL)])
    odd = NovaHost(root, 'odd', images_dir, images_type='qcow2')
    odd.make('guest-header', [disk('Flat', 'disk')])
    odd.make('outside-cache', [disk('Qcow2', 'disk')])
    odd.make('not-listed', [disk('Qcow2', 'disk')])
    odd.make('hostile-base', [disk('Qcow2', 'disk', IMAGE_HOSTILE)])
    run('qemu-img', 'create', '-q', '-f', 'qcow2',
        os.path.join(images_dir, f'{IMAGE_HOSTILE}.qcow2'), str(64 * MiB))
    nova(repo_root, good.jobs + odd.jobs)
    # What makes the odd host's disks undecidable.
    secret = root / 'host-secret'
    secret.write_bytes(b'secret')
    guest_writes_qcow2_header(odd.path('guest-header'), str(secret), root)
    run('qemu-img', 'rebase', '-q', '-u', '-f', 'qcow2', '-F', 'raw', '-b',
        str(secret), odd.path('outside-cache'))
    # A base replaced, under its live overlay, by a qcow2 image that reads
    # a host file through its own backing file.
    hostile = odd.base(names.image_cache_name(IMAGE_HOSTILE))
    os.unlink(hostile)
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
        str(secret), hostile, str(64 * MiB))
    # A qcow2 file no Nova disk.info lists, on a host whose images_type
    # is qcow2: its header is the only thing that says qcow2.
    run('qemu-img', 'create', '-q', '-f', 'qcow2',
        odd.path('not-listed', 'disk.eph0'), str(GiB))
    return good, odd


def cli(repo_root, host: NovaHost, *args: str,
        expect=(0, 1)) -> tuple[int, dict]:
    """Run the real CLI (host mode, --json); its exit status and output."""
    return host_cli(repo_root, host.conf, *args, expect=expect)


def by_disk(result) -> dict:
    return {(d['instance'], d['disk']): d for d in result['disks']}


def kinds(result) -> set:
    return {(f['instance'], f['disk'], f['kind'])
            for i in result['instances'] for f in i['findings']}


@pytest.fixture(scope='module')
def adopted(nova_hosts, repo_root):
    """The good host after a dry run (which wrote nothing) and adopt."""
    good, _odd = nova_hosts
    before = snapshot(good.instances_path)
    code, dry = cli(repo_root, good, 'adopt', '--all', '--dry-run')
    assert code == 0, dry
    assert snapshot(good.instances_path) == before
    code, result = cli(repo_root, good, 'adopt', '--all')
    assert code == 0, result
    return good, dry, result


def snapshot(top) -> dict:
    """Every file under ``top`` with its size and mtime."""
    out = {}
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def test_adopt_all_records_every_nova_disk(adopted):
    good, dry, result = adopted
    u = good.instances
    base = names.image_cache_name('img')
    expect = {
        (u['qcow2-eph'], 'disk'): ('qcow2', 'qcow2', base, 'raw'),
        (u['qcow2-eph'], 'disk.local'): ('qcow2', 'qcow2', EPHEMERAL, 'raw'),
        (u['qcow2'], 'disk'): ('qcow2', 'qcow2', base, 'raw'),
        (u['flat-raw'], 'disk'): ('flat', 'raw', None, None),
        # disk.info's qcow2 is the Qcow2 backend's; with no backing file.
        (u['flat-qcow2'], 'disk'): ('qcow2', 'qcow2', None, None),
        (u['flat-eph'], 'disk'): ('flat', 'raw', None, None),
        (u['flat-eph'], 'disk.local'): ('flat', 'raw', None, None),
    }
    for outcome, run_result in (('would-adopt', dry), ('adopted', result)):
        disks = by_disk(run_result)
        assert set(disks) == set(expect)
        for key, (backend, fmt, backing, backing_fmt) in expect.items():
            d = disks[key]
            assert d['outcome'] == outcome, d
            rec = d['record']
            assert (rec['backend'], rec['format'], rec['backing'],
                    rec['backing_format']) == (backend, fmt, backing,
                                               backing_fmt)
            assert rec['virtual_size'] == GiB
            assert rec['provenance'] == {'path': 'adopted',
                                         'from': 'disk.info'}
    # Nova's bases had no sidecar: adopt described them, once each, and
    # the records hold their sha256.
    for name in (base, EPHEMERAL):
        with open(good.base(name) + names.META_SUFFIX) as f:
            sidecar = json.load(f)
        assert sidecar['provenance'] == 'adopted'
        users = [d for d in result['disks']
                 if d['record']['backing'] == name]
        assert {d['record']['backing_sha256'] for d in users} == \
            {sidecar['sha256']}
    assert not os.path.exists(good.base(names.image_cache_name(
        IMAGE_QCOW2_KEPT)) + names.META_SUFFIX)
    # disks.json written beside Nova's disk.info, which still agrees.
    for label, uuid in u.items():
        assert os.path.exists(good.path(label, names.RECORDS_FILE))


def test_adopt_again_changes_nothing(adopted, repo_root):
    good, _dry, _result = adopted
    before = snapshot(good.instances_path)
    code, again = cli(repo_root, good, 'adopt', '--all')
    assert code == 0
    assert {d['outcome'] for d in again['disks']} == {'recorded'}
    assert snapshot(good.instances_path) == before


def test_verify_all_clean_then_names_each_break(adopted, repo_root):
    good, _dry, _result = adopted
    code, clean = cli(repo_root, good, 'verify', '--all')
    assert (code, clean['clean']) == (0, True), clean
    assert len(clean['instances']) == len(good.instances)
    u = good.instances

    # A live overlay's base removed (the Operations Guide's disappearing
    # image): both disks on it.
    os.unlink(good.base(EPHEMERAL))
    # A raw disk truncated to a larger size; a qcow2 one grown behind its
    # record's back.
    os.truncate(good.path('flat-raw'), 2 * GiB)
    run('qemu-img', 'resize', '-q', '-f', 'qcow2', good.path('flat-qcow2'),
        str(2 * GiB))
    # A base's bytes changed in place (mtime put back: only the digest
    # can tell).
    base = good.base(names.image_cache_name('img'))
    st = os.stat(base)
    with open(base, 'r+b') as f:
        f.seek(4096)
        f.write(b'changed')
    os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns))
    # A disk no record lists; a recorded disk deleted.
    run('qemu-img', 'create', '-q', '-f', 'raw',
        good.path('qcow2', 'disk.swap'), str(MiB))
    os.unlink(good.path('flat-eph', 'disk.local'))

    before = snapshot(good.instances_path)
    code, broken = cli(repo_root, good, 'verify', '--all')
    assert (code, broken['clean']) == (1, False)
    assert snapshot(good.instances_path) == before
    assert kinds(broken) == {
        (u['qcow2-eph'], 'disk.local', 'backing-missing'),
        (u['qcow2-eph'], 'disk', 'backing-changed'),
        (u['qcow2'], 'disk', 'backing-changed'),
        (u['flat-raw'], 'disk', 'size-drift'),
        (u['flat-qcow2'], 'disk', 'size-drift'),
        (u['qcow2'], 'disk.swap', 'unrecorded-disk'),
        (u['flat-eph'], 'disk.local', 'disk-missing'),
    }
    # One instance named: only its findings, and its exit status.
    code, one = cli(repo_root, good, 'verify', u['flat-raw'])
    assert code == 1
    assert kinds(one) == {(u['flat-raw'], 'disk', 'size-drift')}

    code, show = cli(repo_root, good, 'instance', 'show', u['flat-raw'])
    assert code == 1
    (shown,) = show['disks']
    assert shown['record']['virtual_size'] == GiB
    assert shown['actual']['virtual_size'] == 2 * GiB
    assert shown['actual']['content_format'] == 'raw'
    assert [f['kind'] for f in shown['findings']] == ['size-drift']


def test_instance_show_clean(nova_hosts, repo_root, adopted):
    good, _dry, _result = adopted
    code, show = cli(repo_root, good, 'instance', 'show',
                     good.instances['qcow2-eph'])
    # The test above broke this instance's bases; what is shown is still
    # each disk's record next to what is there.
    disks = {d['name']: d for d in show['disks']}
    assert set(disks) == {'disk', 'disk.local'}
    actual = disks['disk']['actual']
    assert actual['exists'] and actual['content_format'] == 'qcow2'
    assert actual['backing']['entry'] == names.image_cache_name('img')
    assert actual['backing']['format'] == 'raw'
    assert disks['disk.local']['actual']['backing']['exists'] is False
    assert code == 1


def test_adopt_reports_what_it_cannot_decide(nova_hosts, repo_root):
    _good, odd = nova_hosts
    u = odd.instances
    before = snapshot(odd.instances_path)
    code, result = cli(repo_root, odd, 'adopt', '--all')
    assert code == 1
    disks = by_disk(result)
    outcomes = {key: d['outcome'] for key, d in disks.items()}
    assert outcomes == {
        (u['guest-header'], 'disk'): 'undecided',
        (u['outside-cache'], 'disk'): 'undecided',
        (u['not-listed'], 'disk'): 'adopted',
        (u['not-listed'], 'disk.eph0'): 'undecided',
        (u['hostile-base'], 'disk'): 'undecided',
    }
    reason = disks[(u['guest-header'], 'disk')]['reason']
    assert 'disk.info says raw' in reason and 'qcow2' in reason
    assert 'not in the image cache' in \
        disks[(u['outside-cache'], 'disk')]['reason']
    assert 'qcow2' in disks[(u['not-listed'], 'disk.eph0')]['reason']
    assert 'safety check failed' in \
        disks[(u['hostile-base'], 'disk')]['reason']
    # No record for what was not decided; disk.info left as Nova wrote it.
    assert not os.path.exists(odd.path('guest-header', names.RECORDS_FILE))
    assert not os.path.exists(odd.path('outside-cache', names.RECORDS_FILE))
    after = snapshot(odd.instances_path)
    # The hostile base was not described (no sidecar vouches for it).
    assert not os.path.exists(odd.base(names.image_cache_name(
        IMAGE_HOSTILE)) + names.META_SUFFIX)
    for label in ('guest-header', 'outside-cache', 'hostile-base'):
        info = odd.path(label, 'disk.info')
        assert after[info] == before[info]
    code, checked = cli(repo_root, odd, 'verify', u['not-listed'])
    assert code == 1
    assert kinds(checked) == {(u['not-listed'], 'disk.eph0',
                               'unrecorded-disk')}
    assert qemu_info(odd.path('not-listed'), 'qcow2')['virtual-size'] == GiB
