"""Root work, through oslo.privsep: the only code that needs root.

nova-compute runs as an unprivileged user and does every root operation in
a privsep daemon; so does this library (the model is os-brick's
``os_brick.privileged``). Flat, Qcow2 and Rbd need no root and never come
here; the Lvm backend (LVM commands, wiping, writing and reading the LV),
dm-crypt, ploop's tool and formatting a block device do.

How a command gets root: a caller asks the one process runner,
``processes.execute(*cmd, root=True)``; the runner hands the command to
:func:`execute`, which checks ``cmd[0]`` against :data:`ROOT_COMMANDS`
(a bare program name the library runs, never a path and never whatever
a caller passes) and then:

* with a context configured (:func:`set_context`), or when this process is
  not root, sends it to the privsep daemon of that context (the library's
  own :data:`default` unless a compute driver set its own), which checks
  it again and runs it with the daemon's environment -- never the caller's
  (a caller's ``PATH`` or ``LD_PRELOAD`` would be arbitrary code as root);
* in a process that is already root with no context configured, runs it
  here, as before: no daemon.

Either way the caller sees the runner's own results and typed errors
(:class:`~imagebackend.exception.ProcessError`,
:class:`~imagebackend.exception.ProcessNoSpace`), and the command is
recorded by :func:`imagebackend.processes.recording` in the caller.

The library's context keeps no capabilities: its daemon is uid 0 only to
start the allowed tools, which get root's capabilities back when they
are executed as uid 0 (as os-brick's and Nova's tools do), and to open
block devices, which uid 0 owns (no capability needed). The daemon
process itself holds none (it still owns root's files); what it may
start is :data:`ROOT_COMMANDS`. Its options are the
``[imagebackend_privileged]`` section (``helper_command``, ``user``,
``capabilities``...: :func:`list_opts`), as ``[privsep_osbrick]`` is
os-brick's; e.g. ``helper_command = sudo nova-rootwrap
/etc/nova/rootwrap.conf privsep-helper --config-file /etc/nova/nova.conf``.

A compute driver may pass a context of its own to :func:`set_context`:
any :class:`~oslo_privsep.priv_context.PrivContext` whose ``prefix``
covers this module (e.g. ``'imagebackend'``: oslo.privsep binds
entrypoints only below a context's prefix, so Nova's own
``sys_admin_pctxt``, prefix ``'nova'``, cannot be one) and whose
``pypath`` names it.
"""

from __future__ import annotations

import copy
import os
import stat
import threading
from typing import Any, Sequence

from oslo_privsep import priv_context
from oslo_utils import importutils

from imagebackend import exception
from imagebackend import fileutils

#: The library's own privsep context (``[imagebackend_privileged]``).
default = priv_context.PrivContext(
    'imagebackend',
    cfg_section='imagebackend_privileged',
    pypath=__name__ + '.default',
    capabilities=[],   # see the module doc: the tools need none from it
    logger_name=__name__ + '.daemon',
)

#: Every program the library runs as root, by bare name. Anything else is
#: refused before it reaches the daemon, and again inside it.
ROOT_COMMANDS = frozenset({
    # Lvm: volume group and volume reports, create, grow, remove, wipe.
    'vgs', 'lvs', 'lvcreate', 'lvextend', 'lvremove', 'shred',
    # Writing an image into an LV / reading an LV out (block devices).
    'qemu-img',
    # Ephemeral storage encryption (dm-crypt mappings over LVs).
    'cryptsetup',
    # Growing the ext filesystem of an image written into an LV.
    'e2fsck', 'resize2fs',
    # Formatting a block device (ephemeral, swap, config drive templates).
    'mkfs', 'mkfs.ext2', 'mkfs.ext3', 'mkfs.ext4', 'mkfs.xfs', 'mkfs.vfat',
    'mkfs.btrfs', 'mkfs.ntfs', 'mkswap', 'mcopy',
    # Ploop's own tool (descriptor, grow).
    'ploop',
})

#: Per program, the only sub-commands (``cmd[1]``) allowed as root, where
#: a program can do far more than the library asks of it.
ROOT_SUBCOMMANDS = {
    'qemu-img': frozenset({'convert'}),
    'cryptsetup': frozenset({'create', 'resize', 'remove'}),
    'ploop': frozenset({'restore-descriptor', 'grow'}),
}

_lock = threading.Lock()
_context: priv_context.PrivContext | None = None


class CommandNotAllowed(exception.InvalidInput):
    """A command that is not one the library runs as root."""

    msg_fmt = "Refusing to run %(cmd)s as root: %(reason)s"


def check_command(cmd: Sequence[str]) -> None:
    """Raise CommandNotAllowed unless ``cmd`` may run as root."""
    cmd = [str(c) for c in cmd]
    shown = ' '.join(cmd) if cmd else '(nothing)'
    if not cmd:
        raise CommandNotAllowed(cmd=shown, reason='no command')
    program = cmd[0]
    if os.sep in program or program not in ROOT_COMMANDS:
        raise CommandNotAllowed(
            cmd=shown, reason=f'{program!r} is not one of the programs the '
            'library runs as root')
    allowed = ROOT_SUBCOMMANDS.get(program)
    if allowed is not None and (len(cmd) < 2 or cmd[1] not in allowed):
        raise CommandNotAllowed(
            cmd=shown, reason=f'{program} may only run '
            f'{", ".join(sorted(allowed))} as root')


def list_opts() -> list[tuple[str, list]]:
    """The ``[imagebackend_privileged]`` options (oslo.config's
    sample-config and Sphinx hooks)."""
    return [(default.cfg_section, copy.deepcopy(priv_context.OPTS))]


# -- which context ------------------------------------------------------------

def set_context(context: priv_context.PrivContext | None) -> None:
    """Send root work to ``context``'s daemon (None: back to the default:
    the library's own context unless this process is root).

    ``context.prefix`` must cover this module (oslo.privsep binds
    entrypoints only below a context's prefix) and ``context.pypath``
    must name it, so its daemon finds the same entrypoint."""
    if context is not None:
        if not __name__.startswith(context.prefix):
            raise exception.InvalidInput(
                reason=f'privsep context {context!r} has prefix '
                f'{context.prefix!r}, which does not cover {__name__}')
        if not context.pypath or \
                importutils.import_class(context.pypath) is not context:
            raise exception.InvalidInput(
                reason=f'privsep context {context!r} has no pypath '
                'naming it')
        _entrypoint_for(context)
    global _context
    _context = context


def get_context() -> priv_context.PrivContext | None:
    """The context root work goes to now; None: run here (already root)."""
    if _context is not None:
        return _context
    if os.geteuid() == 0:
        return None
    return default


# -- the entrypoints ----------------------------------------------------------

def _run_here(cmd: Sequence[str], check_exit_code: Any,
              process_input: bytes | str | None) -> list:
    """Run an allowed command in this process (the daemon, or a root
    caller): ``[failed, exit_code, stdout, stderr]`` (exit_code None: it
    could not be started). Plain values: they cross the privsep socket."""
    from imagebackend import processes  # processes calls back into here
    check_command(cmd)
    try:
        out, err = processes.run_here(
            tuple(cmd), check_exit_code=check_exit_code,
            process_input=process_input)
    except exception.ProcessError as e:
        return [True, e.exit_code, e.stdout, e.stderr]
    return [False, 0, out, err]


def _fsync_here(path: str) -> None:
    """fsync a block device (nothing else: a root fsync of a caller's
    file would be harmless, but only devices need root)."""
    if not stat.S_ISBLK(os.stat(path).st_mode):
        raise CommandNotAllowed(cmd=f'fsync {path}',
                                reason='not a block device')
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_head_here(path: str, length: int) -> bytes:
    """The first ``length`` bytes (at most 64 KiB) of a block device."""
    if not 0 < length <= 64 * 1024:
        raise CommandNotAllowed(cmd=f'read {length} bytes of {path}',
                                reason='at most 64 KiB may be read')
    if not stat.S_ISBLK(os.stat(path).st_mode):
        raise CommandNotAllowed(cmd=f'read {path}',
                                reason='not a block device')
    with open(path, 'rb') as f:
        return f.read(length)


@default.entrypoint
def run_command(cmd: list, check_exit_code: Any,
                process_input: bytes | str | None) -> list:
    return _run_here(cmd, check_exit_code, process_input)


@default.entrypoint
def fsync_device(path: str) -> None:
    _fsync_here(path)


@default.entrypoint
def read_device_head(path: str, length: int) -> bytes:
    return _read_head_here(path, length)


@default.entrypoint
def daemon_pid() -> int:
    """The daemon's process id (tests stop it by PID)."""
    return os.getpid()


_IMPLS = {'run_command': _run_here, 'fsync_device': _fsync_here,
          'read_device_head': _read_head_here,
          'daemon_pid': lambda: os.getpid()}
_OWN = {'run_command': run_command, 'fsync_device': fsync_device,
        'read_device_head': read_device_head, 'daemon_pid': daemon_pid}
_FOREIGN_MARK = '__in__'


def _entrypoint_for(context: priv_context.PrivContext,
                    what: str = 'run_command'):
    """``what`` as an entrypoint of ``context``.

    oslo.privsep's daemon finds an entrypoint by its module and name and
    accepts it only if it belongs to the daemon's own context. A compute
    driver's context gets its own module-level names here,
    ``<what>__in__<pypath in hex>``, made on first use in the caller and,
    through the module ``__getattr__``, in that context's daemon."""
    if context is default:
        return _OWN[what]
    name = f'{what}{_FOREIGN_MARK}{context.pypath.encode().hex()}'
    with _lock:
        found = globals().get(name)
        if found is None:
            impl = _IMPLS[what]

            def entry(*args, **kwargs):
                return impl(*args, **kwargs)
            entry.__name__ = entry.__qualname__ = name
            entry.__module__ = __name__
            found = context.entrypoint(entry)
            globals()[name] = found
    return found


def __getattr__(name: str):
    what, mark, hexpath = name.partition(_FOREIGN_MARK)
    if mark and what in _IMPLS:
        try:
            pypath = bytes.fromhex(hexpath).decode()
        except ValueError:
            raise AttributeError(name)
        context = importutils.import_class(pypath)
        if isinstance(context, priv_context.PrivContext) and \
                context.pypath == pypath:
            return _entrypoint_for(context, what)
    raise AttributeError(name)


# -- what the rest of the library calls ---------------------------------------

def execute(cmd: Sequence[str], *, check_exit_code: Any = True,
            process_input: bytes | str | None = None) -> list:
    """Run ``cmd`` as root (see the module doc): ``[failed, exit_code,
    stdout, stderr]`` (the runner raises its typed error if it failed)."""
    cmd = [str(c) for c in cmd]
    check_command(cmd)
    if isinstance(check_exit_code, (tuple, set, frozenset)):
        check_exit_code = list(check_exit_code)
    context = get_context()
    if context is None:
        return _run_here(cmd, check_exit_code, process_input)
    return _entrypoint_for(context)(cmd, check_exit_code, process_input)


def fsync(path: str) -> None:
    """fsync ``path`` (a block device, where this process is not root)."""
    context = get_context()
    if context is None:
        fileutils.fsync_file(path)
    else:
        _entrypoint_for(context, 'fsync_device')(path)


def read_head(path: str, length: int) -> bytes:
    """The first ``length`` bytes of ``path`` (a block device, where this
    process is not root)."""
    context = get_context()
    if context is None:
        with open(path, 'rb') as f:
            return f.read(length)
    return _entrypoint_for(context, 'read_device_head')(path, length)


def pid() -> int | None:
    """The daemon's PID (starting it if needed); None: no daemon."""
    context = get_context()
    if context is None:
        return None
    return _entrypoint_for(context, 'daemon_pid')()
