"""The one process runner: every command the library runs goes through here.

Going through one function lets tests see every command a code path runs
(:func:`recording`) and gives every failure the same typed error.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator, Sequence

from oslo_concurrency import processutils

from imagebackend import exception
from imagebackend import nospace

# Commands parse tool output, so the locale must not translate it.
_ENV = {'LC_ALL': 'C', 'LANG': 'C'}

_recorders: list[list[tuple[str, ...]]] = []
_recorders_lock = threading.Lock()


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, ...]]]:
    """Collect every command run (by any thread) while the block is active."""
    commands: list[tuple[str, ...]] = []
    with _recorders_lock:
        _recorders.append(commands)
    try:
        yield commands
    finally:
        with _recorders_lock:
            _recorders.remove(commands)


def execute(*cmd: str, check_exit_code: Sequence[int] | bool = True,
            prlimit: processutils.ProcessLimits | None = None,
            process_input: bytes | str | None = None,
            root: bool = False) -> tuple[str, str]:
    """Run ``cmd`` and return ``(stdout, stderr)``; raise ProcessError.

    ``root=True``: the command needs root (an LV, a block device, a
    dm-crypt mapping); it goes through :mod:`imagebackend.privileged`,
    which refuses any program the library does not run as root
    (CommandNotAllowed) and sends it to the privsep daemon unless this
    process is already root with no context configured."""
    cmd = tuple(str(c) for c in cmd)
    if root:
        from imagebackend import privileged  # it runs commands through here
        privileged.check_command(cmd)
        if prlimit is not None:
            raise exception.InvalidInput(
                reason='resource limits are not passed to root commands')
    with _recorders_lock:
        for commands in _recorders:
            commands.append(cmd)
    if not root:
        return run_here(cmd, check_exit_code=check_exit_code,
                        prlimit=prlimit, process_input=process_input)
    failed, exit_code, out, err = privileged.execute(
        cmd, check_exit_code=check_exit_code, process_input=process_input)
    if failed:
        raise _error(cmd, exit_code, out, err)
    return out, err


def run_here(cmd: tuple[str, ...], *,
             check_exit_code: Sequence[int] | bool = True,
             prlimit: processutils.ProcessLimits | None = None,
             process_input: bytes | str | None = None) -> tuple[str, str]:
    """Run ``cmd`` in this process, unrecorded: :func:`execute`'s worker,
    and the privsep daemon's (:mod:`imagebackend.privileged`)."""
    env = dict(os.environ, **_ENV)
    try:
        return processutils.execute(
            *cmd, check_exit_code=check_exit_code, prlimit=prlimit,
            process_input=process_input, env_variables=env)
    except processutils.ProcessExecutionError as e:
        raise _error(cmd, e.exit_code, e.stdout, e.stderr)
    except OSError as e:
        raise exception.ProcessError(
            cmd=' '.join(cmd), exit_code=None, stdout='', stderr=str(e))


def _error(cmd: tuple[str, ...], exit_code: int | None, stdout: str | None,
           stderr: str | None) -> exception.ProcessError:
    # A tool that ran out of space gets the typed error callers handle.
    error = (exception.ProcessNoSpace
             if nospace.tool_reported(stdout, stderr)
             else exception.ProcessError)
    return error(
        cmd=' '.join(cmd), exit_code=exit_code,
        stdout=(stdout or '').strip(), stderr=(stderr or '').strip())
