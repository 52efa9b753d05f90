"""LocalTransport edge cases, and RsyncTransport without a network."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from imagebackend import exception, fileutils, processes
from imagebackend import transport as transport_mod
from imagebackend.transport import LocalTransport, RsyncTransport, Transport

MiB = 1024 * 1024


@pytest.fixture
def hosts(tmp_path):
    a = tmp_path / 'a'
    b = tmp_path / 'b'
    a.mkdir()
    b.mkdir()
    return a, b


@pytest.fixture
def local(hosts):
    return LocalTransport({'a': str(hosts[0]), 'b': str(hosts[1])})


def write_sparse(path, size=16 * MiB, data=b'\x5a' * MiB, at=4 * MiB):
    with open(path, 'wb') as f:
        f.truncate(size)
        f.seek(at)
        f.write(data)


def leftovers(directory):
    return [n for n in os.listdir(directory)
            if n.endswith(transport_mod.STAGING_SUFFIX)]


def test_both_are_transports(local):
    assert isinstance(local, Transport)
    assert isinstance(RsyncTransport('/x'), Transport)


# -- LocalTransport.put -------------------------------------------------------

def test_put_file_creates_parents_keeps_holes_and_mode(local, hosts,
                                                       tmp_path):
    src = tmp_path / 'disk'
    write_sparse(src)
    os.chmod(src, 0o640)
    local.put('b', str(src), 'inst/sub/disk')
    dst = hosts[1] / 'inst' / 'sub' / 'disk'
    assert fileutils.sha256_file(str(dst)) == fileutils.sha256_file(str(src))
    assert os.path.getsize(dst) == 16 * MiB
    assert fileutils.allocated_bytes(str(dst)) <= 2 * MiB
    assert os.stat(dst).st_mode & 0o777 == 0o640
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns
    assert leftovers(dst.parent) == []


def test_put_file_replaces_existing_file(local, hosts, tmp_path):
    (hosts[1] / 'f').write_text('old')
    src = tmp_path / 'f'
    src.write_text('new')
    local.put('b', str(src), 'f')
    assert (hosts[1] / 'f').read_text() == 'new'


def test_put_directory(local, hosts, tmp_path):
    inst = tmp_path / 'inst'
    (inst / 'sub').mkdir(parents=True)
    write_sparse(inst / 'disk')
    (inst / 'disk.info').write_text('{}')
    (inst / 'sub' / 'x').write_text('x')
    os.symlink('disk', inst / 'link')
    local.put('b', str(inst), 'uuid')
    target = hosts[1] / 'uuid'
    assert sorted(os.listdir(target)) == ['disk', 'disk.info', 'link', 'sub']
    assert fileutils.allocated_bytes(str(target / 'disk')) <= 2 * MiB
    assert os.readlink(target / 'link') == 'disk'
    assert (target / 'sub' / 'x').read_text() == 'x'
    assert leftovers(hosts[1]) == []


def test_put_directory_merges_into_existing_directory(local, hosts,
                                                      tmp_path):
    target = hosts[1] / 'uuid'
    (target / 'sub').mkdir(parents=True)
    (target / 'keep').write_text('keep')
    (target / 'disk.info').write_text('old')
    (target / 'sub' / 'y').write_text('y')
    inst = tmp_path / 'inst'
    (inst / 'sub').mkdir(parents=True)
    (inst / 'disk.info').write_text('new')
    (inst / 'sub' / 'x').write_text('x')
    local.put('b', str(inst), 'uuid')
    assert (target / 'keep').read_text() == 'keep'
    assert (target / 'disk.info').read_text() == 'new'
    assert sorted(os.listdir(target / 'sub')) == ['x', 'y']
    assert leftovers(hosts[1]) == [] and leftovers(target) == []


def test_put_file_onto_directory_refused(local, hosts, tmp_path):
    (hosts[1] / 'd').mkdir()
    src = tmp_path / 'f'
    src.write_text('f')
    with pytest.raises(exception.TransportError, match='is a directory'):
        local.put('b', str(src), 'd')
    assert os.listdir(hosts[1] / 'd') == []
    assert leftovers(hosts[1]) == []


def test_failed_put_leaves_nothing(local, hosts, tmp_path):
    inst = tmp_path / 'inst'
    inst.mkdir()
    for n in 'abc':
        (inst / n).write_text(n)
    (hosts[1] / 'uuid').mkdir()
    (hosts[1] / 'uuid' / 'a').write_text('old')
    real = fileutils.clone_or_sparse_copy
    copied = []

    def flaky(src, dst):
        if copied:
            raise OSError(28, 'No space left on device')
        copied.append(src)
        return real(src, dst)

    with mock.patch.object(fileutils, 'clone_or_sparse_copy', flaky):
        with pytest.raises(exception.TransportError,
                           match='No space left') as e:
            local.put('b', str(inst), 'uuid')
        with pytest.raises(exception.TransportError):
            copied.clear()
            local.put('b', str(inst), 'new/uuid')
    assert 'Could not send' in str(e.value)
    assert os.listdir(hosts[1] / 'uuid') == ['a']
    assert (hosts[1] / 'uuid' / 'a').read_text() == 'old'
    assert os.listdir(hosts[1]) == ['uuid']      # 'new' removed again


@pytest.mark.parametrize('rel', ['../x', '/abs', 'a/../../x', '..', '.', '',
                                 'a/./..'])
def test_put_refuses_paths_outside_the_host(local, hosts, tmp_path, rel):
    src = tmp_path / 'f'
    src.write_text('f')
    with pytest.raises(exception.TransportError):
        local.put('b', str(src), rel)
    assert os.listdir(hosts[1]) == []
    assert sorted(os.listdir(tmp_path)) == ['a', 'b', 'f']


def test_put_unknown_host_or_missing_source(local, tmp_path):
    src = tmp_path / 'f'
    src.write_text('f')
    with pytest.raises(exception.TransportError, match='unknown host'):
        local.put('c', str(src), 'f')
    with pytest.raises(exception.TransportError, match='no such file'):
        local.put('b', str(tmp_path / 'missing'), 'f')


def test_put_into_itself_refused(hosts):
    (hosts[0] / 'inst').mkdir()
    (hosts[0] / 'inst' / 'f').write_text('f')
    same = LocalTransport({'a': str(hosts[0])})
    with pytest.raises(exception.TransportError, match='inside'):
        same.put('a', str(hosts[0] / 'inst'), 'inst/copy')
    with pytest.raises(exception.TransportError):
        same.put('a', str(hosts[0] / 'inst'), 'inst')
    assert os.listdir(hosts[0] / 'inst') == ['f']


def test_put_progress(local, tmp_path):
    inst = tmp_path / 'inst'
    inst.mkdir()
    write_sparse(inst / 'disk', size=8 * MiB)
    (inst / 'small').write_bytes(b'x' * 100)
    calls = []
    local.put('b', str(inst), 'uuid', progress=lambda d, t: calls.append(
        (d, t)))
    total = 8 * MiB + 100
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    assert len(calls) >= 3          # start, per file, end
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert {t for _, t in calls} == {total}


def test_progress_on_empty_directory(local, tmp_path):
    (tmp_path / 'empty').mkdir()
    calls = []
    local.put('b', str(tmp_path / 'empty'), 'e',
              progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 0), (0, 0)]


# -- LocalTransport.fetch -----------------------------------------------------

def test_fetch_file_sparse_and_creates_parents(local, hosts, tmp_path):
    write_sparse(hosts[0] / 'img')
    dst = tmp_path / 'x' / 'y' / 'img'
    calls = []
    local.fetch('a', 'img', str(dst), progress=lambda d, t: calls.append(
        (d, t)))
    assert fileutils.sha256_file(str(dst)) == fileutils.sha256_file(
        str(hosts[0] / 'img'))
    assert fileutils.allocated_bytes(str(dst)) <= 2 * MiB
    assert calls[0] == (0, 16 * MiB) and calls[-1] == (16 * MiB, 16 * MiB)


def test_fetch_directory_keeps_holes(local, hosts, tmp_path):
    (hosts[0] / 'inst').mkdir()
    write_sparse(hosts[0] / 'inst' / 'disk')
    local.fetch('a', 'inst', str(tmp_path / 'copy'))
    assert fileutils.allocated_bytes(str(tmp_path / 'copy')) <= 2 * MiB
    assert os.listdir(tmp_path / 'copy') == ['disk']


def test_fetch_errors(local, hosts, tmp_path):
    with pytest.raises(exception.TransportError, match='no such file'):
        local.fetch('a', 'missing', str(tmp_path / 'x'))
    with pytest.raises(exception.TransportError, match='unknown host'):
        local.fetch('zz', 'missing', str(tmp_path / 'x'))
    with pytest.raises(exception.TransportError, match='escapes'):
        local.fetch('a', '../b', str(tmp_path / 'x'))
    assert not (tmp_path / 'x').exists()


def test_failed_fetch_leaves_nothing(local, hosts, tmp_path):
    (hosts[0] / 'f').write_text('f')
    with mock.patch.object(fileutils, 'clone_or_sparse_copy',
                           side_effect=OSError(5, 'Input/output error')):
        with pytest.raises(exception.TransportError, match='Input/output'):
            local.fetch('a', 'f', str(tmp_path / 'dst' / 'f'))
    assert not (tmp_path / 'dst').exists()   # the parent it made, too


# -- RsyncTransport without running anything ----------------------------------

def test_rsync_ssh_command():
    t = RsyncTransport('/var/lib/nova/instances', port=2222,
                       identity_file='/k/id', known_hosts_file='/k/kh',
                       ssh_options=('ConnectTimeout=5',))
    assert t.remote_instances_path == '/var/lib/nova/instances'
    assert t.ssh_command() == [
        'ssh', '-p', '2222', '-o', 'BatchMode=yes',
        '-o', 'StrictHostKeyChecking=accept-new',
        '-i', '/k/id', '-o', 'IdentitiesOnly=yes',
        '-o', 'UserKnownHostsFile=/k/kh', '-o', 'ConnectTimeout=5']
    assert RsyncTransport('/i').ssh_command() == [
        'ssh', '-p', '22', '-o', 'BatchMode=yes',
        '-o', 'StrictHostKeyChecking=accept-new']


@pytest.mark.parametrize('kwargs', [
    {'instances_path': 'relative'},
    {'instances_path': '/i', 'remote_instances_path': 'rel'},
    {'instances_path': '/i', 'user': '-oProxyCommand=x'},
    {'instances_path': '/i', 'user': 'a@b'},
    {'instances_path': '/i', 'port': 0},
    {'instances_path': '/i', 'port': '22'},
    {'instances_path': '/i', 'ssh_options': ('-oProxyCommand=x',)},
])
def test_rsync_bad_arguments(kwargs):
    with pytest.raises(exception.InvalidInput):
        RsyncTransport(**kwargs)


def test_rsync_failure_carries_stderr(tmp_path):
    t = RsyncTransport(str(tmp_path))
    error = exception.ProcessError(
        cmd='rsync', exit_code=23, stdout='',
        stderr='rsync: link_stat "/i/x" failed: No such file or directory')
    with mock.patch.object(processes, 'execute', side_effect=error) as ex:
        with pytest.raises(exception.TransportError) as e:
            t.fetch('host-1', 'x', str(tmp_path / 'dst'))
    assert 'exited with 23' in str(e.value)
    assert 'link_stat' in str(e.value)
    assert ex.call_args.args[0] == 'rsync'
    assert os.listdir(tmp_path) == []


def test_rsync_put_without_mkpath_uses_ssh_mkdir(tmp_path):
    src = tmp_path / 'f'
    src.write_text('f')
    t = RsyncTransport('/i', port=2200)
    with mock.patch.object(transport_mod, 'rsync_version',
                           return_value=(3, 1, 3)), \
            mock.patch.object(processes, 'execute',
                              return_value=('', '')) as ex:
        t.put('host-1', str(src), 'a b/f')
    mkdir, rsync = [c.args for c in ex.call_args_list]
    assert mkdir[0] == 'ssh' and mkdir[-5:] == (
        'root@host-1', 'mkdir', '-p', '--', "'/i/a b'")
    assert rsync[0] == 'rsync' and '--mkpath' not in rsync
    assert rsync[-2:] == (str(src), 'root@host-1:/i/a b/f')


def test_rsync_put_with_mkpath(tmp_path):
    (tmp_path / 'd').mkdir()
    t = RsyncTransport('/i')
    with mock.patch.object(transport_mod, 'rsync_version',
                           return_value=(3, 2, 7)), \
            mock.patch.object(processes, 'execute',
                              return_value=('', '')) as ex:
        t.put('host-1', str(tmp_path / 'd'), 'uuid')
    [rsync] = [c.args for c in ex.call_args_list]
    assert '--mkpath' in rsync
    assert rsync[-2:] == (str(tmp_path / 'd') + '/', 'root@host-1:/i/uuid/')


def test_rsync_version_parsed():
    transport_mod.rsync_version.cache_clear()
    try:
        with mock.patch.object(processes, 'execute', return_value=(
                'rsync  version 3.2.7  protocol version 31\n', '')):
            assert transport_mod.rsync_version() == (3, 2, 7)
    finally:
        transport_mod.rsync_version.cache_clear()


def test_conflicting_merge_changes_nothing(local, hosts, tmp_path):
    target = hosts[1] / 'uuid'
    (target / 'zz').mkdir(parents=True)     # a directory where a file goes
    (target / 'a').write_text('old')
    inst = tmp_path / 'inst'
    inst.mkdir()
    (inst / 'a').write_text('new')          # renamed first if not checked
    (inst / 'zz').write_text('file')
    with pytest.raises(exception.TransportError, match='is a directory'):
        local.put('b', str(inst), 'uuid')
    assert (target / 'a').read_text() == 'old'
    assert sorted(os.listdir(target)) == ['a', 'zz']
    assert leftovers(hosts[1]) == []
