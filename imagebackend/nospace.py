"""Running out of space, as a typed error (:class:`exception.NoSpace`).

The library's write points (atomic writes, copies, downloads, the process
runner) turn ENOSPC and EDQUOT into ``NoSpace`` so callers never have to
pick a bare ``OSError`` apart; everything else passes through unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import functools
from typing import Callable, Iterator

from imagebackend import exception

ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# What tools print (strerror of those errnos in the C locale the process
# runner sets).
TOOL_MESSAGES = ('No space left on device', 'Disk quota exceeded')


def is_no_space(error: BaseException) -> bool:
    """True if ``error`` is an OSError for a full disk or quota."""
    return isinstance(error, OSError) and error.errno in ERRNOS


def tool_reported(*outputs: str | None) -> bool:
    """True if a command's output says it ran out of space."""
    return any(m in (out or '') for out in outputs for m in TOOL_MESSAGES)


@contextlib.contextmanager
def mapped(what: str) -> Iterator[None]:
    """Re-raise ENOSPC/EDQUOT from the block as NoSpace about ``what``."""
    try:
        yield
    except OSError as e:
        if not is_no_space(e):
            raise
        raise exception.NoSpace(what=what,
                                reason=e.strerror or str(e)) from e


def guarded(target: Callable[..., str]) -> Callable:
    """Decorate a writing function; ``target(*args, **kwargs)`` names what
    it writes (for the message)."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except OSError as e:
                if not is_no_space(e):
                    raise
                try:
                    what = str(target(*args, **kwargs))
                except Exception:  # the message must not hide the error
                    what = func.__qualname__
                raise exception.NoSpace(what=what,
                                        reason=e.strerror or str(e)) from e
        return wrapper
    return decorate
