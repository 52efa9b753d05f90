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
            process_input: bytes | str | None = None) -> tuple[str, str]:
    """Run ``cmd`` and return ``(stdout, stderr)``; raise ProcessError."""
    cmd = tuple(str(c) for c in cmd)
    with _recorders_lock:
        for commands in _recorders:
            commands.append(cmd)
    env = dict(os.environ, **_ENV)
    try:
        return processutils.execute(
            *cmd, check_exit_code=check_exit_code, prlimit=prlimit,
            process_input=process_input, env_variables=env)
    except processutils.ProcessExecutionError as e:
        # A tool that ran out of space gets the typed error callers handle.
        error = (exception.ProcessNoSpace
                 if nospace.tool_reported(e.stdout, e.stderr)
                 else exception.ProcessError)
        raise error(
            cmd=' '.join(cmd), exit_code=e.exit_code,
            stdout=(e.stdout or '').strip(), stderr=(e.stderr or '').strip())
    except OSError as e:
        raise exception.ProcessError(
            cmd=' '.join(cmd), exit_code=None, stdout='', stderr=str(e))
