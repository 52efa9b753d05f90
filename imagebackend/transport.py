"""How files under instances_path move between hosts.

Hosts share the layout of instances_path (as Nova requires), so a file is
named by its path relative to instances_path. A :class:`Transport` copies
such a file (or directory) from another host to a local path (``fetch``:
side-loading a cache entry) and a local file or directory to another host
(``put``: cold migration sends an instance directory).

:class:`LocalTransport` maps host names to directories on this machine, so
two "hosts" can live on one machine; :class:`RsyncTransport` runs
``rsync`` over ``ssh`` to real hosts.

Both keep holes in sparse files, preserve modes and mtimes (like
``rsync -a``) and raise :class:`~imagebackend.exception.TransportError` for
every failure (unknown or malformed host, a relpath escaping
instances_path, a missing source, a failed copy).

Progress: ``fetch`` and ``put`` accept ``progress(bytes_done, bytes_total)``.
It is called at least twice, once before the copy starts and once after it
finished, with non-decreasing ``bytes_done``; the last call always has
``bytes_done == bytes_total`` (the apparent size of what was copied: holes
count). ``bytes_total`` is 0 while it is not known (RsyncTransport.fetch
learns the size of a remote file only once it has it).
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shlex
import shutil
import stat
import tempfile
from typing import Callable, Mapping, Protocol, Sequence, runtime_checkable

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import processes

#: ``progress(bytes_done, bytes_total)``; see the module docstring.
ProgressCallback = Callable[[int, int], None]

STAGING_SUFFIX = '.part'


@runtime_checkable
class Transport(Protocol):
    """Copy files between hosts by their path relative to instances_path."""

    def fetch(self, host: str, relpath: str, dst: str,
              progress: ProgressCallback | None = None) -> None:
        """Copy ``relpath`` as it is on ``host`` to the local path ``dst``.

        A file replaces ``dst``; a directory becomes ``dst`` (its entries
        are merged into ``dst`` when that is an existing directory).
        Missing parents of ``dst`` are created.
        """
        ...

    def put(self, host: str, src: str, relpath: str,
            progress: ProgressCallback | None = None) -> None:
        """Copy the local file or directory ``src`` to ``relpath`` on
        ``host``: a file becomes ``relpath``; a directory's contents are
        synced into the directory ``relpath``. Missing parents are created.
        """
        ...


# -- helpers shared by the transports ----------------------------------------

def _fetch_error(what: str, host: str,
                 reason: str) -> exception.TransportError:
    return exception.TransportError(what=what, host=host, reason=reason)


def _put_error(what: str, host: str, reason: str) -> exception.TransportError:
    return exception.TransportError(
        f'Could not send {what} to host {host}: {reason}',
        what=what, host=host, reason=reason)


def _check_relpath(relpath: str, error) -> str:
    """``relpath`` normalised; refuse paths that leave instances_path."""
    if not isinstance(relpath, str) or not relpath:
        raise error('empty path')
    if '\0' in relpath:
        raise error('path contains a NUL byte')
    if os.path.isabs(relpath) or '..' in relpath.split(os.sep):
        raise error('path escapes the host')
    norm = os.path.normpath(relpath)
    if norm in ('.', ''):
        raise error('path names the instances path itself')
    return norm


def _tree_size(path: str) -> int:
    """Apparent size of a file, or of every regular file in a directory."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for n in files:
            st = os.lstat(os.path.join(root, n))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class _Progress:
    """Feeds a ProgressCallback, never backwards, ending at total/total."""

    def __init__(self, callback: ProgressCallback | None, total: int = 0):
        self.callback = callback
        self.total = total
        self.done = 0
        if callback:
            callback(0, total)

    def add(self, n: int) -> None:
        self.done = min(self.done + n, self.total)
        if self.callback and n:
            self.callback(self.done, self.total)

    def finish(self, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        self.done = self.total
        if self.callback:
            self.callback(self.done, self.total)


def _make_parents(final: str) -> list[str]:
    """Create the missing parents of ``final``; return them, deepest first."""
    missing = []
    parent = os.path.dirname(final) or '.'
    while not os.path.isdir(parent):
        missing.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    os.makedirs(os.path.dirname(final) or '.', exist_ok=True)
    return missing


def _remove_dirs(dirs: list[str]) -> None:
    """Remove the (empty) directories _make_parents created, deepest first."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return


def _staging_dir(final: str) -> str:
    """A new empty directory next to ``final`` (same filesystem)."""
    return tempfile.mkdtemp(dir=os.path.dirname(final) or '.',
                            suffix=STAGING_SUFFIX,
                            prefix='.' + os.path.basename(final) + '.')


def _check_install(staged: str, final: str) -> None:
    """Refuse before renaming anything what :func:`_install` cannot do."""
    staged_is_dir = os.path.isdir(staged) and not os.path.islink(staged)
    final_is_dir = os.path.isdir(final) and not os.path.islink(final)
    if not staged_is_dir:
        if final_is_dir:
            raise IsADirectoryError(f'{final} is a directory')
    elif final_is_dir:
        for name in os.listdir(staged):
            _check_install(os.path.join(staged, name),
                           os.path.join(final, name))
    elif os.path.lexists(final):
        raise NotADirectoryError(f'{final} exists and is not a directory')


def _install(staged: str, final: str) -> None:
    """Rename what was staged into place (after :func:`_check_install`).

    A file (or symlink) replaces ``final``; a directory is renamed to
    ``final`` or, when ``final`` is an existing directory, merged into it
    entry by entry. Renames stay on one filesystem, so once the copy
    succeeded this does not fail halfway in practice.
    """
    staged_is_dir = os.path.isdir(staged) and not os.path.islink(staged)
    final_is_dir = os.path.isdir(final) and not os.path.islink(final)
    if not staged_is_dir:
        if final_is_dir:
            raise IsADirectoryError(f'{final} is a directory')
        os.replace(staged, final)
    elif not os.path.lexists(final):
        os.rename(staged, final)
    elif final_is_dir:
        for name in sorted(os.listdir(staged)):
            _install(os.path.join(staged, name), os.path.join(final, name))
        shutil.copystat(staged, final, follow_symlinks=False)
        os.rmdir(staged)
    else:
        raise NotADirectoryError(f'{final} exists and is not a directory')
    fileutils.fsync_dir(os.path.dirname(final) or '.')


def _copy_tree(src: str, dst: str, progress: _Progress) -> None:
    """Copy ``src`` (file, symlink or directory) to the new path ``dst``.

    Regular files go through :func:`fileutils.clone_or_sparse_copy` (reflink
    or holes kept); modes and mtimes are preserved like ``rsync -a``.
    """
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        for name in sorted(os.listdir(src)):
            _copy_tree(os.path.join(src, name), os.path.join(dst, name),
                       progress)
        shutil.copystat(src, dst)
    elif stat.S_ISREG(st.st_mode):
        fileutils.clone_or_sparse_copy(src, dst)
        shutil.copystat(src, dst)
        fileutils.fsync_file(dst)
        progress.add(st.st_size)
    else:
        raise OSError(f'{src} is neither a file, a directory nor a symlink')


def _staged_copy(src: str, dst: str,
                 callback: ProgressCallback | None) -> None:
    """Copy ``src`` to ``dst`` via a staging directory next to ``dst``.

    A failed copy removes the staging directory: nothing is left behind and
    an existing ``dst`` is untouched.
    """
    real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)
    if real_dst == real_src or real_dst.startswith(real_src + os.sep):
        raise OSError(f'{dst} is {src} or inside it')
    progress = _Progress(callback, _tree_size(src))
    created = _make_parents(dst)
    try:
        staging = _staging_dir(dst)
        try:
            staged = os.path.join(staging, os.path.basename(dst))
            _copy_tree(src, staged, progress)
            _check_install(staged, dst)
            _install(staged, dst)
        finally:
            fileutils.remove_path(staging)
    except BaseException:
        _remove_dirs(created)
        raise
    progress.finish()


# -- LocalTransport -----------------------------------------------------------

class LocalTransport:
    """Hosts are directories (each one host's instances_path) here."""

    def __init__(self, hosts: Mapping[str, str]):
        self.hosts = dict(hosts)

    def _remote(self, host: str, relpath: str, error) -> str:
        if host not in self.hosts:
            raise error('unknown host')
        return os.path.join(self.hosts[host], _check_relpath(relpath, error))

    def fetch(self, host: str, relpath: str, dst: str,
              progress: ProgressCallback | None = None) -> None:
        def error(reason):
            return _fetch_error(relpath, host, reason)

        src = self._remote(host, relpath, error)
        if not os.path.lexists(src):
            raise error('no such file')
        try:
            _staged_copy(src, os.path.abspath(dst), progress)
        except OSError as e:
            raise error(str(e))

    def put(self, host: str, src: str, relpath: str,
            progress: ProgressCallback | None = None) -> None:
        def error(reason):
            return _put_error(src, host, reason)

        target = self._remote(host, relpath, error)
        if not os.path.lexists(src):
            raise error('no such file')
        try:
            _staged_copy(src, target, progress)
        except OSError as e:
            raise error(str(e))


# -- RsyncTransport -----------------------------------------------------------

# Host names, IPv4 addresses and user names: nothing ssh or rsync could read
# as an option (leading '-'), a user/host separator ('@') or a path (':').
_NAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9._-]*$')

#: rsync release whose --mkpath treats a single file's last path component
#: as the file name (3.2.3 introduced the option, 3.2.4 settled that).
MKPATH_VERSION = (3, 2, 4)


@functools.lru_cache(maxsize=None)
def rsync_version() -> tuple[int, ...]:
    """Version of the local rsync, e.g. ``(3, 2, 7)``; ``()`` if unknown."""
    try:
        out, _err = processes.execute('rsync', '--version')
    except exception.ProcessError:
        return ()
    m = re.search(r'version\s+(\d+)\.(\d+)\.(\d+)', out)
    return tuple(int(x) for x in m.groups()) if m else ()


def check_host(host: str) -> str:
    """``host`` if it is a plain host name or IPv4 address, else refuse.

    Refused: empty names, whitespace, a leading '-', '@', ':', '/', quotes
    or anything else a shell, ssh or rsync could read as more than a host.
    (IPv6 literals contain ':' and are refused; name such hosts.)
    """
    if not isinstance(host, str) or not _NAME_RE.fullmatch(host):
        raise exception.TransportError(
            what='host name', host=repr(host),
            reason='not a valid host name')
    return host


class RsyncTransport:
    """``rsync -a --sparse`` over ``ssh`` between hosts.

    ``instances_path`` is this host's; as in Nova every host keeps its
    instances at the same path, so it names the remote one too.
    ``remote_instances_path`` overrides that for hosts whose path differs
    (and for tests, where "remote" is this machine, 127.0.0.1, and the
    remote instances_path is another directory).

    ssh runs with ``BatchMode=yes`` (never prompts), on ``port``, with
    ``identity_file`` (and ``IdentitiesOnly=yes``) and ``known_hosts_file``
    when given, ``StrictHostKeyChecking=accept-new`` (a new host's key is
    recorded, a changed one is refused) and each of ``ssh_options`` as
    ``-o OPTION`` (e.g. ``'ConnectTimeout=10'``).

    Every command goes through :func:`imagebackend.processes.execute`.
    Host names are checked (:func:`check_host`) before anything runs.

    ``fetch`` copies into a staging directory next to ``dst`` and renames
    the result into place, so a failed fetch leaves nothing. ``put`` relies
    on rsync: each file is written under a temporary name and renamed, so a
    failed put leaves no partial file, but a directory can be left with
    some of its files; putting it again completes it. The remote parent
    directory is created with ``--mkpath`` when the local rsync is
    new enough (>= 3.2.4; the remote one must then know the option too),
    otherwise with ``ssh HOST mkdir -p``.

    Progress is reported at the start and the end of each copy only (rsync
    runs to completion inside :func:`processes.execute`); ``fetch`` reports
    a total of 0 at the start, as the remote size is not known yet.
    """

    def __init__(self, instances_path: str, *, user: str = 'root',
                 port: int = 22, identity_file: str | None = None,
                 known_hosts_file: str | None = None,
                 ssh_options: Sequence[str] = (),
                 remote_instances_path: str | None = None):
        if not os.path.isabs(instances_path):
            raise exception.InvalidInput(
                reason=f'instances_path {instances_path!r} is not absolute')
        remote = remote_instances_path or instances_path
        if not posixpath.isabs(remote):
            raise exception.InvalidInput(
                reason=f'remote_instances_path {remote!r} is not absolute')
        if not isinstance(user, str) or not _NAME_RE.fullmatch(user):
            raise exception.InvalidInput(reason=f'bad ssh user {user!r}')
        if isinstance(port, bool) or not isinstance(port, int) or \
                not 0 < port < 65536:
            raise exception.InvalidInput(reason=f'bad ssh port {port!r}')
        for opt in ssh_options:
            if not isinstance(opt, str) or not opt or opt.startswith('-') \
                    or '\n' in opt:
                raise exception.InvalidInput(
                    reason=f'bad ssh option {opt!r} (give "Name=value")')
        self.instances_path = instances_path
        self.remote_instances_path = remote
        self.user = user
        self.port = port
        self.identity_file = identity_file
        self.known_hosts_file = known_hosts_file
        self.ssh_options = tuple(ssh_options)

    # -- commands ------------------------------------------------------------

    def ssh_command(self) -> list[str]:
        """The ssh command (argument list) rsync and mkdir run."""
        cmd = ['ssh', '-p', str(self.port), '-o', 'BatchMode=yes',
               '-o', 'StrictHostKeyChecking=accept-new']
        if self.identity_file:
            cmd += ['-i', self.identity_file, '-o', 'IdentitiesOnly=yes']
        if self.known_hosts_file:
            cmd += ['-o', f'UserKnownHostsFile={self.known_hosts_file}']
        for opt in self.ssh_options:
            cmd += ['-o', opt]
        return cmd

    def _rsync(self, *args: str) -> list[str]:
        # rsync splits -e on spaces and honours quotes: quote each word.
        ssh = ' '.join(shlex.quote(w) for w in self.ssh_command())
        return ['rsync', '-a', '--sparse', '-e', ssh, *args]

    def _remote_path(self, relpath: str) -> str:
        return posixpath.join(self.remote_instances_path, relpath)

    def _spec(self, host: str, path: str) -> str:
        return f'{self.user}@{host}:{path}'

    def _run(self, cmd: list[str], error) -> None:
        try:
            processes.execute(*cmd)
        except exception.ProcessError as e:
            raise error(f'{cmd[0]} exited with {e.exit_code}: '
                        f'{e.stderr or e.stdout}')

    # -- Transport ------------------------------------------------------------

    def fetch(self, host: str, relpath: str, dst: str,
              progress: ProgressCallback | None = None) -> None:
        def error(reason):
            return _fetch_error(relpath, host, reason)

        check_host(host)
        rel = _check_relpath(relpath, error)
        dst = os.path.abspath(dst)
        report = _Progress(progress, 0)
        try:
            created = _make_parents(dst)
            staging = _staging_dir(dst)
        except OSError as e:
            raise error(str(e))
        try:
            # Into the staging dir: rsync names the copy after relpath's last
            # component, whether it is a file or a directory.
            self._run(self._rsync(self._spec(host, self._remote_path(rel)),
                                  staging + '/'), error)
            staged = os.path.join(staging, posixpath.basename(rel))
            if not os.path.lexists(staged):
                raise error('rsync copied nothing')
            total = _tree_size(staged)
            _check_install(staged, dst)
            _install(staged, dst)
        except BaseException as e:
            fileutils.remove_path(staging)
            _remove_dirs(created)
            if isinstance(e, OSError):
                raise error(str(e))
            raise
        fileutils.remove_path(staging)
        report.finish(total)

    def put(self, host: str, src: str, relpath: str,
            progress: ProgressCallback | None = None) -> None:
        def error(reason):
            return _put_error(src, host, reason)

        check_host(host)
        rel = _check_relpath(relpath, error)
        if not os.path.lexists(src):
            raise error('no such file')
        src = os.path.abspath(src)
        is_dir = os.path.isdir(src) and not os.path.islink(src)
        report = _Progress(progress, _tree_size(src))
        target = self._remote_path(rel)
        options = []
        if rsync_version() >= MKPATH_VERSION:
            options.append('--mkpath')
        else:
            parent = posixpath.dirname(target)
            # The remote shell reads the command: quote the path.
            self._run(self.ssh_command() + [
                f'{self.user}@{host}', 'mkdir', '-p', '--',
                shlex.quote(parent)], error)
        if is_dir:
            # Trailing slashes: the directory's contents go into target.
            source, dest = src.rstrip('/') + '/', target + '/'
        else:
            source, dest = src, target
        self._run(self._rsync(*options, source, self._spec(host, dest)),
                  error)
        report.finish()
