"""Every process this Python process starts, whoever starts it.

:func:`imagebackend.processes.recording` sees the library's commands only;
Nova's own image backend runs its commands through oslo.concurrency and
privsep. To count both sides alike, :func:`install` hooks the one place
every child process is made (``subprocess.Popen._execute_child``, also
under eventlet's green Popen, a subclass) and logs each command line, the
way a reader would name it: ``env VAR=value`` and oslo's prlimit wrapper
(``python -m oslo_concurrency.prlimit ... -- <command>``) are taken off.

Install it after Nova is imported: Nova's import monkey-patches
``subprocess`` with eventlet, whose green Popen derives from its own copy
of the stdlib class, not the one a hook installed earlier patched.
"""

from __future__ import annotations

import os
import subprocess

LOG: list[list[str]] = []
_installed = False


def command(args) -> list[str]:
    """The command line ``args`` (Popen's) runs, without wrappers."""
    argv = [args] if isinstance(args, (str, bytes)) else list(args)
    argv = [os.fsdecode(a) for a in argv]
    if 'oslo_concurrency.prlimit' in argv and '--' in argv:
        argv = argv[argv.index('--') + 1:]
    if argv and os.path.basename(argv[0]) == 'env':
        argv = argv[1:]
        while argv and '=' in argv[0] and not argv[0].startswith('-'):
            argv = argv[1:]
    return argv


def install() -> list[list[str]]:
    """Log every process started from now on into :data:`LOG`."""
    global _installed
    if not _installed:
        execute_child = subprocess.Popen._execute_child

        def logged(self, args, *rest, **kwargs):
            LOG.append(command(args))
            return execute_child(self, args, *rest, **kwargs)

        subprocess.Popen._execute_child = logged
        _installed = True
    return LOG


def is_qemu_img_info(argv: list[str]) -> bool:
    return len(argv) > 1 and os.path.basename(argv[0]) == 'qemu-img' and \
        argv[1] == 'info'
