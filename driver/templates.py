"""Template functions: what writes a generated disk's initial contents.

Each template is a small frozen dataclass that is callable as
``template(target)`` -- the ``func(target: str) -> None`` shape that
:class:`imagebackend.disks.DiskFromFunc` and the image cache take -- and
names its own cache entry (``cache_name``).

``target`` is either

* a path that does not exist yet: a sparse file of the template's size is
  made there first (in-process, no ``qemu-img create``), or
* an existing block device (an LVM logical volume) or a file of the right
  size: it is formatted in place, never created, truncated or replaced.

Unlike Nova, every trait that changes the bytes a template writes (the
filesystem, or the ``virt_mkfs`` command, and the label) is part of its
cache name, so two different templates never share one entry (Nova
section 4.2: one ``ephemeral_<N>_<md5[:7]>`` name for ext4, ntfs and vfat
contents, and for every label and BDM ``guest_format``).

Every command goes through :func:`imagebackend.processes.execute`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import stat
import tempfile
from typing import Any, Iterable, Sequence

from oslo_config import cfg

from imagebackend import exception
from imagebackend import names
from imagebackend import processes

# Nova's _DEFAULT_FS_BY_OSTYPE / _DEFAULT_FILE_SYSTEM (nova/virt/disk/api.py).
DEFAULT_FS_BY_OS_TYPE = {'linux': 'ext4', 'windows': 'ntfs'}
DEFAULT_FS = 'vfat'

# Nova's is_supported_fs_format(): what a BDM's guest_format may ask for.
SUPPORTED_GUEST_FORMATS = ('ext2', 'ext3', 'ext4', 'xfs')

# Longest label each mkfs accepts; a longer one would fail (xfs, vfat) or be
# silently cut (ext*) by the tool, so it is refused before anything runs.
_MAX_LABEL = {'ext2': 16, 'ext3': 16, 'ext4': 16, 'xfs': 12,
              'vfat': 11, 'msdos': 11}

# Nova's configdrive.CONFIGDRIVESIZE_BYTES: the size of a vfat config drive.
CONFIG_DRIVE_VFAT_SIZE = 64 * 1024 * 1024
CONFIG_DRIVE_LABEL = 'config-2'
CONFIG_DRIVE_FORMATS = ('iso9660', 'vfat')


# -- targets ------------------------------------------------------------------

def _prepare_target(target: str, size: int) -> bool:
    """Make ``target`` a ``size``-byte sparse file unless it exists.

    Returns True if this call created the file (the caller removes it again
    if formatting fails). An existing target must be a block device of at
    least ``size`` bytes (LVM rounds an LV up to whole extents) or a regular
    file of exactly ``size`` bytes; anything else is refused rather than
    resized, since it may be someone's data.
    """
    try:
        # O_EXCL: a target that appears concurrently is never truncated.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        _check_existing_target(target, size)
        return False
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        _remove_quietly(target)
        raise
    os.close(fd)
    return True


def _check_existing_target(target: str, size: int) -> None:
    st = os.stat(target)  # follows /dev/<vg>/<lv> symlinks to the device
    if stat.S_ISREG(st.st_mode):
        if st.st_size != size:
            raise exception.InvalidInput(
                reason=f'{target} exists with {st.st_size} bytes, not the '
                       f'{size} bytes of the template')
        return
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(target, os.O_RDONLY)
        try:
            actual = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
        if actual < size:
            raise exception.InvalidInput(
                reason=f'block device {target} has {actual} bytes, less '
                       f'than the {size} bytes of the template')
        return
    raise exception.InvalidInput(
        reason=f'{target} exists and is neither a regular file nor a block '
               'device')


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _needs_root(target: str) -> bool:
    """Formatting a block device (an LV) needs root (the command goes
    through imagebackend.privileged); a file is the caller's own."""
    try:
        return stat.S_ISBLK(os.stat(target).st_mode)
    except OSError:
        return False


class _Formatting:
    """Create the target if needed; remove it again only if we made it."""

    def __init__(self, target: str, size: int) -> None:
        self.target = target
        self.size = size
        self.created = False

    def __enter__(self) -> str:
        self.created = _prepare_target(self.target, self.size)
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.created:
            # A half-formatted file must not pass for a template.
            _remove_quietly(self.target)


def _check_size(size: object, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise exception.InvalidInput(
            reason=f'{what} size must be a positive number of bytes, '
                   f'not {size!r}')
    return size


# -- ephemeral ----------------------------------------------------------------

def _split_mkfs_command(command: str) -> list[str]:
    """``command`` split into arguments, not yet substituted.

    Split first, substitute per argument after: a target path with spaces
    then stays one argument (Nova substituted first and split on spaces).
    """
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise exception.InvalidInput(
            reason=f'virt_mkfs command {command!r} cannot be parsed: {e}')
    if not argv:
        raise exception.InvalidInput(reason='virt_mkfs command is empty')
    return argv


def _substitute(argv: Sequence[str], command: str, fs_label: str,
                target: str) -> list[str]:
    values = {'fs_label': fs_label, 'target': target}
    try:
        return [arg % values if '%' in arg else arg for arg in argv]
    except (KeyError, ValueError, TypeError) as e:
        raise exception.InvalidInput(
            reason=f'virt_mkfs command {command!r} may only use '
                   f'%(fs_label)s and %(target)s: {e!r}')


def mkfs_args(fs: str, label: str, target: str) -> list[str]:
    """Nova's ``mkfs`` command line for filesystem ``fs``, plus quiet/fast.

    ``mkfs -t <fs> [-F] [-q] [-L <label> | -n <label>] <target>``: ``-F``
    for ext3/ext4/ntfs as in Nova (format a file / whole device without
    asking); ``-q`` for ext* (no progress output); ``-Q`` for ntfs (quick
    format: do not zero every sector, which would un-sparse the file);
    ``-f`` for xfs (overwrite an existing filesystem, e.g. a reused LV);
    ``-n`` is the label option of vfat/msdos.
    """
    args = ['mkfs', '-t', fs]
    if fs in ('ext3', 'ext4', 'ntfs'):
        args.append('-F')
    if fs in ('ext2', 'ext3', 'ext4'):
        args.append('-q')
    elif fs == 'ntfs':
        args.append('-Q')
    elif fs == 'xfs':
        args.append('-f')
    args += ['-n' if fs in ('vfat', 'msdos') else '-L', label, target]
    return args


@dataclasses.dataclass(frozen=True)
class Ephemeral:
    """An ephemeral disk: ``size`` bytes holding an empty filesystem.

    Exactly one of ``fs`` (made with ``mkfs -t <fs>``, see
    :func:`mkfs_args`) and ``mkfs_command`` (an operator's ``virt_mkfs``
    command with ``%(fs_label)s`` and ``%(target)s`` placeholders) is set.
    Use :func:`ephemeral` to choose them the way Nova does.
    """

    size: int
    label: str
    fs: str | None
    mkfs_command: str | None

    def __post_init__(self) -> None:
        _check_size(self.size, 'ephemeral')
        if not isinstance(self.label, str) or not self.label:
            raise exception.InvalidInput(
                reason=f'ephemeral label must be a non-empty string, not '
                       f'{self.label!r}')
        if (self.fs is None) == (self.mkfs_command is None):
            raise exception.InvalidInput(
                reason='an ephemeral template needs exactly one of fs and '
                       'mkfs_command')
        if self.mkfs_command is not None:
            # Refuse a bad command now, not when the first disk is made.
            _substitute(_split_mkfs_command(self.mkfs_command),
                        self.mkfs_command, self.label, 'target')
            return
        if not isinstance(self.fs, str) or not self.fs \
                or self.fs.startswith('-'):
            raise exception.InvalidInput(
                reason=f'{self.fs!r} is not a filesystem type')
        limit = _MAX_LABEL.get(self.fs)
        if limit is not None and len(self.label) > limit:
            raise exception.InvalidInput(
                reason=f'label {self.label!r} is longer than the {limit} '
                       f'characters {self.fs} allows')

    @property
    def cache_name(self) -> str:
        """``ephemeral_<size>_fs-<fs>_label-<label>``, or with ``mkfs-h<sha1>``
        (a digest of the command) in place of the filesystem."""
        if self.mkfs_command is not None:
            return names.template_name('ephemeral', self.size,
                                       mkfs=self.mkfs_command,
                                       label=self.label)
        return names.template_name('ephemeral', self.size, fs=self.fs,
                                   label=self.label)

    def command(self, target: str) -> list[str]:
        """The mkfs command line this template runs on ``target``."""
        if self.mkfs_command is not None:
            return _substitute(_split_mkfs_command(self.mkfs_command),
                               self.mkfs_command, self.label, target)
        return mkfs_args(self.fs, self.label, target)

    def __call__(self, target: str) -> None:
        """Write the empty filesystem to ``target`` (see module doc)."""
        argv = self.command(target)
        with _Formatting(target, self.size):
            processes.execute(*argv, root=_needs_root(target))


def mkfs_commands(conf: cfg.ConfigOpts) -> tuple[dict[str, str], str | None]:
    """``virt_mkfs`` parsed as Nova does: ``({os_type: command}, default)``.

    Entries are ``<os_type>=<command>`` (split on the first ``=``: commands
    may contain ``=``); later entries win; the ``default`` key also sets the
    command for os_types without one; an empty os_type is ignored.
    """
    commands: dict[str, str] = {}
    default = None
    for entry in conf.virt_mkfs:
        if '=' not in entry:
            raise exception.InvalidInput(
                reason=f'virt_mkfs entry {entry!r} is not '
                       '<os_type>=<mkfs command>')
        os_type, command = (part.strip() for part in entry.split('=', 1))
        if os_type:
            commands[os_type] = command
        if os_type == 'default':
            default = command
    return commands, default


def check_guest_format(specified_fs: str) -> str:
    """Return a BDM's ``guest_format`` if Nova supports it, else raise."""
    if specified_fs not in SUPPORTED_GUEST_FORMATS:
        raise exception.InvalidInput(
            reason=f'ephemeral disk format {specified_fs!r} is not '
                   'supported; use one of '
                   f'{", ".join(SUPPORTED_GUEST_FORMATS)}')
    return specified_fs


def ephemeral(conf: cfg.ConfigOpts, size: int, label: str,
              os_type: str | None,
              specified_fs: str | None = None) -> Ephemeral:
    """The ephemeral template Nova's ``configurable_mkfs`` would write.

    ``size`` is in bytes; ``label`` is Nova's ``ephemeral<idx>``;
    ``specified_fs`` is a BDM's ``guest_format`` (validated: ext2, ext3,
    ext4 or xfs, else InvalidInput). In Nova's order: the ``virt_mkfs``
    command for ``os_type`` (or the ``default=`` one) wins, even over
    ``specified_fs``; else the filesystem is ``specified_fs``, else
    ``default_ephemeral_format``, else ext4 for linux, ntfs for windows,
    vfat for anything else.
    """
    # Nova checks only a non-empty guest_format; '' means "not given".
    if specified_fs:
        check_guest_format(specified_fs)
    commands, default = mkfs_commands(conf)
    # Nova: _MKFS_COMMAND.get(os_type, _DEFAULT_MKFS_COMMAND) or ''. An
    # os_type mapped to an empty command thus falls through to a filesystem.
    command = commands.get(os_type, default)
    if command:
        return Ephemeral(size=size, label=label, fs=None,
                         mkfs_command=command)
    fs = (specified_fs or conf.default_ephemeral_format
          or DEFAULT_FS_BY_OS_TYPE.get(os_type, DEFAULT_FS))
    return Ephemeral(size=size, label=label, fs=fs, mkfs_command=None)


# -- swap ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Swap:
    """A swap disk of ``size`` bytes (``mkswap``; Nova gives it no label)."""

    size: int

    def __post_init__(self) -> None:
        _check_size(self.size, 'swap')

    @property
    def cache_name(self) -> str:
        """``swap_<size>``, e.g. ``swap_512M``."""
        return names.template_name('swap', self.size)

    def command(self, target: str) -> list[str]:
        """The command line this template runs on ``target``."""
        return ['mkswap', target]

    def __call__(self, target: str) -> None:
        """Write a swap signature to ``target`` (see module doc)."""
        with _Formatting(target, self.size):
            processes.execute(*self.command(target),
                              root=_needs_root(target))


# -- config drive -------------------------------------------------------------

def _hostname(instance: Any) -> str:
    return getattr(instance, 'hostname', None) or instance.name


@dataclasses.dataclass(frozen=True)
class ConfigDrive:
    """An instance's config drive (label ``config-2``), from its metadata.

    Holds ``openstack/latest/meta_data.json``, ``openstack/latest/
    vendor_data.json`` and, for each injected file ``(path, contents)`` in
    ``files``, ``openstack/content/<NNNN>`` (listed in meta_data.json's
    ``files`` as Nova does). ``fmt`` is ``iso9660`` (genisoimage) or
    ``vfat`` (a 64 MiB image filled with mtools: no mount, no root).

    ``instance`` is Nova-shaped: ``uuid``, ``name``, ``metadata`` (dict),
    optionally ``hostname`` (defaults to ``name``). The drive is read when
    the template runs, so it reflects the instance at that time.
    """

    instance: Any
    fmt: str = 'iso9660'
    files: tuple[tuple[str, bytes | str], ...] = ()

    def __post_init__(self) -> None:
        if self.fmt not in CONFIG_DRIVE_FORMATS:
            raise exception.InvalidInput(
                reason=f'config drive format {self.fmt!r} is not one of '
                       f'{", ".join(CONFIG_DRIVE_FORMATS)}')
        names.check_instance_uuid(self.instance.uuid)
        # Any iterable of pairs is accepted; a tuple keeps the dataclass
        # frozen in spirit.
        object.__setattr__(self, 'files', tuple(
            (str(path), contents) for path, contents in self.files))

    @property
    def cache_name(self) -> str:
        """``configdrive_<instance uuid>``: per-instance content is never a
        shared template."""
        return names.check_cache_name(f'configdrive_{self.instance.uuid}')

    @property
    def size(self) -> int | None:
        """Bytes the drive needs, if fixed (vfat); an ISO is as big as its
        content."""
        return CONFIG_DRIVE_VFAT_SIZE if self.fmt == 'vfat' else None

    def meta_data(self) -> dict[str, Any]:
        """What ``openstack/latest/meta_data.json`` holds."""
        inst = self.instance
        data: dict[str, Any] = {
            'uuid': inst.uuid,
            'name': inst.name,
            'hostname': _hostname(inst),
            'meta': dict(getattr(inst, 'metadata', None) or {}),
            'launch_index': 0,
            'availability_zone': None,
        }
        if self.files:
            data['files'] = [
                {'path': path, 'content_path': f'/content/{idx:04d}'}
                for idx, (path, _contents) in enumerate(self.files)]
        return data

    def write_tree(self, root: str) -> list[str]:
        """Write the drive's files under ``root``; return its top entries."""
        latest = os.path.join(root, 'openstack', 'latest')
        os.makedirs(latest)
        _write(os.path.join(latest, 'meta_data.json'),
               json.dumps(self.meta_data()).encode())
        _write(os.path.join(latest, 'vendor_data.json'), b'{}')
        if self.files:
            content = os.path.join(root, 'openstack', 'content')
            os.makedirs(content)
            for idx, (_path, contents) in enumerate(self.files):
                if isinstance(contents, str):
                    contents = contents.encode('utf-8')
                _write(os.path.join(content, f'{idx:04d}'), contents)
        return sorted(os.listdir(root))

    def commands(self, target: str, root: str,
                 entries: Iterable[str] = ('openstack',)) -> list[list[str]]:
        """The command lines that turn tree ``root`` into ``target``."""
        if self.fmt == 'iso9660':
            return [['genisoimage', '-o', target, '-ldots',
                     '-allow-lowercase', '-allow-multidot', '-l',
                     '-publisher', 'imagebackend', '-quiet', '-J', '-r',
                     '-V', CONFIG_DRIVE_LABEL, root]]
        # No shell runs these, so "<root>/*" is expanded here.
        return [['mkfs.vfat', '-n', CONFIG_DRIVE_LABEL, target],
                ['mcopy', '-s', '-i', target,
                 *(os.path.join(root, e) for e in entries), '::/']]

    def __call__(self, target: str) -> None:
        """Build the config drive into ``target`` (see module doc)."""
        with tempfile.TemporaryDirectory(prefix='configdrive-') as root:
            entries = self.write_tree(root)
            cmds = self.commands(target, root, entries)
            if self.fmt == 'vfat':
                with _Formatting(target, CONFIG_DRIVE_VFAT_SIZE):
                    for cmd in cmds:
                        processes.execute(*cmd, root=_needs_root(target))
                return
            # genisoimage creates (or overwrites in place) the target itself.
            existed = os.path.lexists(target)
            try:
                for cmd in cmds:
                    processes.execute(*cmd)
            except BaseException:
                if not existed:
                    _remove_quietly(target)
                raise


def _write(path: str, data: bytes) -> None:
    with open(path, 'wb') as f:
        f.write(data)
