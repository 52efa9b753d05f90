"""RsyncTransport against a real sshd on 127.0.0.1.

Both "hosts" are this machine: the "remote" instances_path is a temporary
directory that RsyncTransport reaches over ssh (``remote_instances_path``),
the local one another.
"""

from __future__ import annotations

import json
import os

import pytest
from oslo_config import cfg

import imagebackend
from imagebackend import exception, fileutils, names, processes
from imagebackend.transport import RsyncTransport, Transport
from tests.functional.conftest import guest_bytes, run
from tests.functional.sshd import sshd_server  # noqa: F401 (fixture)
from tests.hosts import GiB, Instance, MiB


@pytest.fixture
def remote(tmp_path):
    path = tmp_path / 'remote' / 'instances'
    path.mkdir(parents=True)
    return path


@pytest.fixture
def local(tmp_path):
    path = tmp_path / 'local' / 'instances'
    path.mkdir(parents=True)
    return path


def make_transport(server, local_path, remote_path, **kwargs):
    return RsyncTransport(str(local_path), port=server.port,
                          identity_file=server.client_key,
                          known_hosts_file=server.known_hosts,
                          remote_instances_path=str(remote_path), **kwargs)


@pytest.fixture
def transport(sshd_server, local, remote):
    return make_transport(sshd_server, local, remote)


def write_sparse(path, size=64 * MiB, data_at=8 * MiB, data=b'\xab' * MiB):
    with open(path, 'wb') as f:
        f.truncate(size)
        f.seek(data_at)
        f.write(data)


def rsync_commands(commands):
    return [c for c in commands if c and c[0] == 'rsync' and '-e' in c]


def test_is_a_transport(transport):
    assert isinstance(transport, Transport)


def test_fetch_sparse_file_keeps_holes(transport, remote, tmp_path):
    write_sparse(remote / 'sparse.img')
    dst = tmp_path / 'copy' / 'sparse.img'
    calls = []
    transport.fetch('127.0.0.1', 'sparse.img', str(dst),
                    progress=lambda d, t: calls.append((d, t)))
    assert fileutils.sha256_file(str(dst)) == fileutils.sha256_file(
        str(remote / 'sparse.img'))
    assert os.path.getsize(dst) == 64 * MiB
    assert fileutils.allocated_bytes(str(dst)) <= 2 * MiB
    assert calls[0][0] == 0 and calls[-1] == (64 * MiB, 64 * MiB)
    # Staging directory gone: only the copy is there.
    assert os.listdir(dst.parent) == ['sparse.img']


def test_fetch_cache_entry_and_sidecar(transport, remote, local):
    base = remote / '_base'
    base.mkdir()
    name = names.image_cache_name('img')
    write_sparse(base / name, size=16 * MiB, data_at=0)
    sidecar = {'sha256': fileutils.sha256_file(str(base / name)),
               'format': 'raw', 'virtual_size': 16 * MiB}
    (base / (name + names.META_SUFFIX)).write_text(json.dumps(sidecar))

    target = local / '_base'
    rel = os.path.join('_base', name)
    transport.fetch('127.0.0.1', rel + names.META_SUFFIX,
                    str(target / (name + names.META_SUFFIX)))
    transport.fetch('127.0.0.1', rel, str(target / name))
    assert json.loads((target / (name + names.META_SUFFIX)).read_text()) \
        == sidecar
    assert fileutils.sha256_file(str(target / name)) == sidecar['sha256']
    assert sorted(os.listdir(target)) == sorted(
        [name, name + names.META_SUFFIX])


def test_fetch_directory(transport, remote, tmp_path):
    (remote / 'inst' / 'sub').mkdir(parents=True)
    (remote / 'inst' / 'a').write_text('a')
    (remote / 'inst' / 'sub' / 'b').write_text('b')
    dst = tmp_path / 'fetched'
    transport.fetch('127.0.0.1', 'inst', str(dst))
    assert (dst / 'a').read_text() == 'a'
    assert (dst / 'sub' / 'b').read_text() == 'b'


def test_put_instance_directory(transport, remote, tmp_path):
    inst = tmp_path / 'inst'
    inst.mkdir()
    write_sparse(inst / 'disk', size=32 * MiB)
    (inst / 'disk.info').write_text('{"disk": "raw"}')
    (inst / 'console.log').write_text('boot\n')
    os.chmod(inst / 'console.log', 0o600)
    calls = []
    transport.put('127.0.0.1', str(inst), 'uuid-1',
                  progress=lambda d, t: calls.append((d, t)))
    target = remote / 'uuid-1'
    assert sorted(os.listdir(target)) == ['console.log', 'disk', 'disk.info']
    assert (target / 'disk.info').read_text() == '{"disk": "raw"}'
    assert os.stat(target / 'console.log').st_mode & 0o777 == 0o600
    assert fileutils.sha256_file(str(target / 'disk')) == \
        fileutils.sha256_file(str(inst / 'disk'))
    assert fileutils.allocated_bytes(str(target / 'disk')) <= 2 * MiB
    total = 32 * MiB + len('{"disk": "raw"}') + len('boot\n')
    assert calls[0] == (0, total) and calls[-1] == (total, total)

    # Again, into the existing directory: contents are synced.
    (inst / 'disk.info').write_text('{"disk": "qcow2"}')
    transport.put('127.0.0.1', str(inst), 'uuid-1')
    assert (target / 'disk.info').read_text() == '{"disk": "qcow2"}'


def test_put_file_creates_remote_parents(transport, remote, tmp_path):
    src = tmp_path / 'f'
    src.write_bytes(b'x' * 1000)
    transport.put('127.0.0.1', str(src), 'a/b/renamed')
    assert (remote / 'a' / 'b' / 'renamed').read_bytes() == b'x' * 1000


def test_missing_remote_file_raises(transport, tmp_path):
    dst = tmp_path / 'dst' / 'x'
    with pytest.raises(exception.TransportError) as e:
        transport.fetch('127.0.0.1', '_base/missing', str(dst))
    assert 'exited with 23' in str(e.value)
    assert 'No such file or directory' in str(e.value)
    assert not dst.parent.exists()   # nothing left, not even the parent


def test_missing_local_source_raises(transport, tmp_path):
    with processes.recording() as commands:
        with pytest.raises(exception.TransportError, match='no such file'):
            transport.put('127.0.0.1', str(tmp_path / 'nope'), 'x')
    assert commands == []


@pytest.mark.parametrize('bad', [
    '-oProxyCommand=touch /tmp/pwned', 'evil host', 'root@127.0.0.1',
    '127.0.0.1:/etc', '', '::1', 'a/b', "x'y", 'host\n'])
def test_bad_host_name_runs_nothing(transport, tmp_path, bad):
    src = tmp_path / 'f'
    src.write_text('x')
    with processes.recording() as commands:
        with pytest.raises(exception.TransportError):
            transport.fetch(bad, 'x', str(tmp_path / 'dst'))
        with pytest.raises(exception.TransportError):
            transport.put(bad, str(src), 'x')
    assert commands == []


@pytest.mark.parametrize('rel', ['../x', '/etc/passwd', 'a/../../x', '.',
                                 ''])
def test_escaping_relpath_runs_nothing(transport, tmp_path, rel):
    src = tmp_path / 'f'
    src.write_text('x')
    with processes.recording() as commands:
        with pytest.raises(exception.TransportError):
            transport.fetch('127.0.0.1', rel, str(tmp_path / 'dst'))
        with pytest.raises(exception.TransportError):
            transport.put('127.0.0.1', str(src), rel)
    assert commands == []


def test_commands_are_rsync_over_ssh(transport, remote, tmp_path,
                                     sshd_server):
    (remote / 'f').write_text('f')
    with processes.recording() as commands:
        transport.fetch('127.0.0.1', 'f', str(tmp_path / 'f'))
        transport.put('127.0.0.1', str(tmp_path / 'f'), 'g')
    rsyncs = rsync_commands(commands)
    assert len(rsyncs) == 2
    for cmd in rsyncs:
        assert '-a' in cmd and '--sparse' in cmd
        ssh = cmd[cmd.index('-e') + 1].split()
        assert ssh[0] == 'ssh'
        assert ssh[ssh.index('-p') + 1] == str(sshd_server.port)
        assert 'BatchMode=yes' in ssh
        assert 'IdentitiesOnly=yes' in ssh
        assert 'StrictHostKeyChecking=accept-new' in ssh
        assert ssh[ssh.index('-i') + 1] == sshd_server.client_key
        assert f'UserKnownHostsFile={sshd_server.known_hosts}' in ssh
    assert rsyncs[0][-2] == f'root@127.0.0.1:{remote}/f'
    assert rsyncs[1][-1] == f'root@127.0.0.1:{remote}/g'
    # The known host key was used; nothing new was added.
    with open(sshd_server.known_hosts) as f:
        assert len(f.read().splitlines()) == 1


def test_ssh_options_are_passed(sshd_server, local, remote, tmp_path):
    (remote / 'f').write_text('f')
    transport = make_transport(sshd_server, local, remote,
                               ssh_options=('ConnectTimeout=30',))
    with processes.recording() as commands:
        transport.fetch('127.0.0.1', 'f', str(tmp_path / 'f'))
    [cmd] = rsync_commands(commands)
    assert 'ConnectTimeout=30' in cmd[cmd.index('-e') + 1].split()


def test_refused_login_raises(sshd_server, local, remote, tmp_path):
    (remote / 'f').write_text('f')
    other_key = str(tmp_path / 'other_key')
    run('ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-f', other_key)
    transport = RsyncTransport(str(local), port=sshd_server.port,
                               identity_file=other_key,
                               known_hosts_file=sshd_server.known_hosts,
                               remote_instances_path=str(remote))
    with pytest.raises(exception.TransportError, match='Permission denied'):
        transport.fetch('127.0.0.1', 'f', str(tmp_path / 'f'))
    assert not (tmp_path / 'f').exists()


# -- end to end: side-loading a cache entry over ssh ------------------------

def make_raw_image(images_dir, image_id):
    path = os.path.join(images_dir, f'{image_id}.raw')
    run('qemu-img', 'create', '-q', '-f', 'raw', path, str(64 * MiB))
    run('qemu-io', '-f', 'raw', '-c', 'write -P 0xab 0 1M', path)
    return path


@pytest.mark.parametrize('image_type', ['qcow2', 'flat'])
def test_backend_side_loads_over_ssh(tmp_path, host, instance, sshd_server,
                                     image_type):
    # The source host (127.0.0.1) has the image cached; it is then
    # deleted upstream.
    src_image = make_raw_image(host.imagebackend.images_dir, 'img')
    src_backend = imagebackend.Backend(conf=host)
    src_backend.by_name(Instance(), 'disk', 'qcow2').create_from_image(
        None, 'img', GiB)
    os.unlink(src_image)
    src_entry = src_backend.image_cache.get(names.image_cache_name('img'))

    dest_conf = cfg.ConfigOpts()
    imagebackend.config.register_opts(dest_conf)
    dest_conf.set_override('instances_path', str(tmp_path / 'dest'))
    dest_conf.set_override('images_dir', host.imagebackend.images_dir,
                           group='imagebackend')
    dest_conf([])
    transport = make_transport(sshd_server, dest_conf.instances_path,
                               host.instances_path)
    dest = imagebackend.Backend(conf=dest_conf, transport=transport)
    disk = dest.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.ImageNotFound):
        disk.create_from_image(None, 'img', 128 * MiB)
    with processes.recording() as commands:
        disk.create_from_image(None, 'img', 128 * MiB, fallback='127.0.0.1')
    assert len(rsync_commands(commands)) == 2   # sidecar, then data

    entry = dest.image_cache.get(names.image_cache_name('img'))
    assert entry.provenance == 'side-loaded'
    assert entry.sha256 == src_entry.sha256
    assert entry.path.startswith(dest_conf.instances_path)
    assert fileutils.allocated_bytes(entry.path) <= 4 * MiB
    data = guest_bytes(disk.path, disk.driver_format, tmp_path)
    assert len(data) == 128 * MiB
    assert data[:MiB] == b'\xab' * MiB
    assert data[MiB:2 * MiB] == bytes(MiB)
    # No staging or .part files left in the cache directory.
    assert sorted(os.listdir(os.path.dirname(entry.path))) == sorted(
        [entry.name, entry.name + names.META_SUFFIX])
