"""The runner's root path (imagebackend.privileged).

The allow-list and the context choice are pure logic; a configured
context is a real oslo.privsep daemon (forked: these tests run as root),
stopped and reaped by its PID. The unprivileged run through ``sudo
privsep-helper`` is tests/functional/test_unprivileged.py.
"""

import os
from unittest import mock

import pytest
from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

from imagebackend import exception
from imagebackend import privileged
from imagebackend import processes

#: A compute driver's own context (pypath names it, prefix covers us).
DRIVER_CONTEXT = priv_context.PrivContext(
    'imagebackend', cfg_section='imagebackend_test_driver_privsep',
    pypath=__name__ + '.DRIVER_CONTEXT', capabilities=[caps.CAP_SYS_ADMIN])


@pytest.mark.parametrize('cmd', [
    ('rm', '-rf', '/'),                       # not a program we run as root
    ('sh', '-c', 'lvcreate x'),
    ('/usr/sbin/lvcreate', '-n', 'x', 'vg'),  # a path, not a bare name
    ('./lvs',),
    ('qemu-img', 'info', '/etc/shadow'),      # only convert as root
    ('qemu-img',),
    ('cryptsetup', 'luksFormat', '/dev/sda'),
    ('ploop', 'mount', 'x'),
    (),
])
def test_root_path_refuses_what_the_library_never_runs_as_root(cmd):
    with processes.recording() as seen, \
            mock.patch.object(processes, 'run_here') as run_here, \
            mock.patch.object(privileged, 'get_context') as get_context:
        with pytest.raises(privileged.CommandNotAllowed) as e:
            processes.execute(*cmd, root=True)
    assert 'as root' in str(e.value)
    # Refused before anything ran, was sent, or was recorded.
    assert seen == []
    run_here.assert_not_called()
    get_context.assert_not_called()
    assert isinstance(e.value, exception.InvalidInput)


def test_the_allow_list_is_bare_program_names():
    for program in privileged.ROOT_COMMANDS:
        assert os.sep not in program and program.strip() == program
    for program in privileged.ROOT_SUBCOMMANDS:
        assert program in privileged.ROOT_COMMANDS


def test_root_command_needs_no_prlimit():
    with pytest.raises(exception.InvalidInput):
        processes.execute('lvs', root=True, prlimit=mock.Mock())


def test_context_choice(monkeypatch):
    monkeypatch.setattr(privileged, '_context', None)
    with mock.patch.object(os, 'geteuid', return_value=0):
        assert privileged.get_context() is None       # root: as today
    with mock.patch.object(os, 'geteuid', return_value=1000):
        assert privileged.get_context() is privileged.default
    monkeypatch.setattr(privileged, '_context', DRIVER_CONTEXT)
    with mock.patch.object(os, 'geteuid', return_value=0):
        assert privileged.get_context() is DRIVER_CONTEXT


def test_as_root_without_a_context_runs_here_and_records(tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr(privileged, '_context', None)
    src, dst = tmp_path / 'a.raw', tmp_path / 'b.raw'
    src.write_bytes(b'\xab' * 4096)
    cmd = ('qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'raw',
           str(src), str(dst))
    with processes.recording() as seen, \
            mock.patch.object(privileged, '_entrypoint_for') as entry:
        assert processes.execute(*cmd, root=True) == ('', '')
    entry.assert_not_called()                  # no daemon
    assert seen == [cmd]
    assert dst.read_bytes() == src.read_bytes()
    assert privileged.pid() is None


def test_root_failures_keep_the_runners_error_types(monkeypatch):
    monkeypatch.setattr(privileged, '_context', None)
    with pytest.raises(exception.ProcessError) as e:
        processes.execute('lvs', 'no-such-vg-xyz', root=True)
    assert e.value.exit_code == 5 and 'no-such-vg-xyz' in e.value.stderr
    assert not isinstance(e.value, exception.ProcessNoSpace)
    # What comes back from a daemon is classified by the runner itself.
    full = [True, 1, '', 'qemu-img: error while writing sector 0: '
            'No space left on device']
    with mock.patch.object(privileged, 'execute', return_value=full):
        with pytest.raises(exception.ProcessNoSpace) as e:
            processes.execute('qemu-img', 'convert', 'a', 'b', root=True)
    assert e.value.exit_code == 1
    assert e.value.cmd == 'qemu-img convert a b'


@pytest.mark.parametrize('bad, reason', [
    (priv_context.PrivContext('nova', cfg_section='ib_test_nova',
                              pypath='nova.privsep.sys_admin_pctxt',
                              capabilities=[]), 'prefix'),
    (priv_context.PrivContext('imagebackend', cfg_section='ib_test_nopath',
                              capabilities=[]), 'pypath'),
])
def test_set_context_refuses_a_context_it_cannot_use(bad, reason,
                                                     monkeypatch):
    monkeypatch.setattr(privileged, '_context', None)
    with pytest.raises(exception.InvalidInput) as e:
        privileged.set_context(bad)
    assert reason in str(e.value)
    assert privileged._context is None


def test_a_driver_context_entrypoint_is_found_by_its_daemon():
    """The daemon of a driver's context resolves our entrypoint by module
    and name (importutils), in a process where it was never made."""
    entry = privileged._entrypoint_for(DRIVER_CONTEXT)
    name = 'run_command__in__' + DRIVER_CONTEXT.pypath.encode().hex()
    assert getattr(privileged, name) is entry
    del vars(privileged)[name]
    found = getattr(privileged, name)
    assert DRIVER_CONTEXT.is_entrypoint(found)
    assert not privileged.default.is_entrypoint(found)
    with pytest.raises(AttributeError):
        getattr(privileged, 'run_command__in__' + b'os.path'.hex())


@pytest.fixture
def driver_daemon(monkeypatch):
    """A real privsep daemon for DRIVER_CONTEXT, stopped and reaped by
    PID afterwards."""
    monkeypatch.setattr(privileged, '_context', None)
    DRIVER_CONTEXT.start(priv_context.Method.FORK)
    privileged.set_context(DRIVER_CONTEXT)
    pid = privileged.pid()
    try:
        yield pid
    finally:
        privileged.set_context(None)
        DRIVER_CONTEXT.stop()
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_configured_context_runs_root_commands_in_its_daemon(
        driver_daemon, tmp_path):
    assert driver_daemon not in (None, os.getpid())
    src, dst = tmp_path / 'a.raw', tmp_path / 'b.raw'
    src.write_bytes(b'\x5a' * 8192)
    cmd = ('qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'raw',
           str(src), str(dst))
    with processes.recording() as seen, \
            mock.patch.object(processes, 'run_here') as run_here:
        processes.execute(*cmd, root=True)
        with pytest.raises(exception.ProcessError) as e:
            processes.execute('lvs', 'no-such-vg-xyz', root=True)
    run_here.assert_not_called()               # not in this process
    assert dst.read_bytes() == src.read_bytes()
    assert seen == [cmd, ('lvs', 'no-such-vg-xyz')]
    assert e.value.exit_code == 5
    # Non-root commands never go to the daemon.
    with mock.patch.object(privileged, 'execute') as sent:
        processes.execute('true')
    sent.assert_not_called()


def test_the_daemon_checks_the_allow_list_itself(driver_daemon):
    """A caller that skips the runner still cannot run anything as root."""
    entry = privileged._entrypoint_for(DRIVER_CONTEXT)
    with pytest.raises(privileged.CommandNotAllowed):
        entry(['sh', '-c', 'id'], True, None)
    fsync = privileged._entrypoint_for(DRIVER_CONTEXT, 'fsync_device')
    with pytest.raises(privileged.CommandNotAllowed):
        fsync('/etc/passwd')
    head = privileged._entrypoint_for(DRIVER_CONTEXT, 'read_device_head')
    with pytest.raises(privileged.CommandNotAllowed):
        head('/etc/shadow', 100)


# -- the callers: root only where root is needed ------------------------------

def test_dm_crypt_commands_are_asked_as_root():
    from imagebackend import dmcrypt
    with mock.patch.object(processes, 'execute',
                           return_value=('', '')) as execute:
        dmcrypt.create_volume('x-dmcrypt', '/dev/vg/x', 'aes-xts-plain64',
                              256, b'\0' * 32)
        dmcrypt.resize_volume('x-dmcrypt')
        dmcrypt.delete_volume('x-dmcrypt')
    assert [c.args[:2] for c in execute.call_args_list] == [
        ('cryptsetup', 'create'), ('cryptsetup', 'resize'),
        ('cryptsetup', 'remove')]
    assert all(c.kwargs.get('root') for c in execute.call_args_list)


def test_formatting_asks_root_for_a_block_device_only(tmp_path):
    from driver import templates
    target = tmp_path / 'swap'
    with mock.patch.object(processes, 'execute',
                           return_value=('', '')) as execute:
        templates.Swap(32 * 1024 * 1024)(str(target))
        device = '/dev/loop-control'   # a char device: not a block device
        assert not templates._needs_root(device)
        blocks = [os.path.join('/dev', n) for n in sorted(os.listdir('/dev'))
                  if n.startswith('loop') and n[4:].isdigit()]
        assert blocks, 'no /dev/loopN on this host'
        assert templates._needs_root(blocks[0])
    assert execute.call_args.args == ('mkswap', str(target))
    assert execute.call_args.kwargs.get('root') is False


def test_growing_a_filesystem_asks_root_for_a_block_device_only(tmp_path):
    from imagebackend import filesystems
    path = tmp_path / 'disk.raw'
    path.write_bytes(b'\0' * 4096)
    with mock.patch.object(privileged, 'read_head') as read_head:
        assert filesystems.bare_ext_filesystem(str(path)) is False
    read_head.assert_not_called()          # a file: read here
    device = next(os.path.join('/dev', n) for n in sorted(os.listdir('/dev'))
                  if n.startswith('loop') and n[4:].isdigit())
    with mock.patch.object(privileged, 'read_head',
                           return_value=b'\0' * 2048) as read_head:
        assert filesystems.bare_ext_filesystem(device) is False
    read_head.assert_called_once_with(device, 2048)


def test_the_librarys_context_keeps_no_capabilities():
    from oslo_config import cfg
    assert cfg.CONF[privileged.default.cfg_section].capabilities == []
    [(section, opts)] = privileged.list_opts()
    assert section == 'imagebackend_privileged'
    assert {'helper_command', 'user', 'capabilities'} <= {o.name for o in opts}
