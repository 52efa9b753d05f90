"""Growing the filesystem of a grown disk whose content is one bare
ext2/3/4 filesystem, as Nova's ``disk.api.extend`` does for raw files
(and its Lvm for a volume bigger than its image): ``e2fsck -fp`` and, if
that passed, ``resize2fs``.

Only a disk that *is* an ext filesystem, from its first byte, is touched:
its superblock magic at byte 1080 (what Nova's ``e2label`` check reads),
and no partition table beside it (an MBR signature or a GPT header: a disk
that reads both ways is left alone, where Nova's check would take it for a
filesystem). A partitioned disk, another filesystem (xfs, vfat...) or a
disk too small to hold a superblock is never opened by a tool.

What is grown is the guest's business: a failing ``e2fsck`` or
``resize2fs`` is logged and the disk keeps its new size (Nova did the
same), so callers grow the disk and save its record first, then call
:func:`grow_ext`. The disk is a raw file or block device here: a qcow2
disk's filesystem is never grown, whatever Nova's
``resize_fs_using_block_device`` says (the library does not read that
option; it would need the image mounted through nbd).
"""

from __future__ import annotations

import logging
import os
import stat

from imagebackend import exception
from imagebackend import privileged
from imagebackend import processes

LOG = logging.getLogger(__name__)

SUPPORTED = ('ext2', 'ext3', 'ext4')

# The ext superblock starts at byte 1024; s_magic (0xEF53, little endian)
# is 56 bytes into it.
_MAGIC_AT = 1024 + 56
_EXT_MAGIC = b'\x53\xef'
_HEAD = 2048
# A DOS partition table ends with this signature at byte 510; a GPT
# header starts at byte 512 (LBA 1) with this text.
_MBR_SIGNATURE = (510, b'\x55\xaa')
_GPT_SIGNATURE = (512, b'EFI PART')


def _block_device(path: str) -> bool:
    """A block device (an LV) needs root to be read and repaired; a file
    is the caller's own."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def bare_ext_filesystem(path: str) -> bool:
    """Whether the disk at ``path`` is one ext2/3/4 filesystem from its
    first byte, with no partition table (read in-process, no tool)."""
    try:
        if _block_device(path):
            head = privileged.read_head(path, _HEAD)
        else:
            with open(path, 'rb') as f:
                head = f.read(_HEAD)
    except OSError:
        return False
    if len(head) < _HEAD or \
            head[_MAGIC_AT:_MAGIC_AT + len(_EXT_MAGIC)] != _EXT_MAGIC:
        return False
    for offset, signature in (_MBR_SIGNATURE, _GPT_SIGNATURE):
        if head[offset:offset + len(signature)] == signature:
            LOG.info('%s has both an ext superblock and a partition table: '
                     'its filesystem is not grown', path)
            return False
    return True


def grow_ext(path: str) -> bool:
    """Grow the bare ext filesystem filling the raw disk at ``path`` to
    the disk's size: ``e2fsck -fp`` (exit codes 0-2: clean or repaired),
    then ``resize2fs``. True if it was grown; False if the disk is not a
    bare ext filesystem or a tool failed (logged; nothing raised)."""
    if not bare_ext_filesystem(path):
        return False
    try:
        processes.execute('e2fsck', '-fp', path, check_exit_code=[0, 1, 2],
                          root=_block_device(path))
    except exception.ProcessError as e:
        LOG.warning('the filesystem in %s is not grown: e2fsck found what '
                    'it may not repair unattended: %s', path, e)
        return False
    try:
        processes.execute('resize2fs', path, root=_block_device(path))
    except exception.ProcessError as e:
        LOG.warning('the filesystem in %s was not grown: %s', path, e)
        return False
    return True
