"""A revert scope: register an undo step after every side effect.

    with Reverter() as revert:
        make_thing()
        revert.add(remove_thing)
        ...
    # success: undo steps are dropped; failure: they run newest first.
"""

from __future__ import annotations

import logging
from typing import Callable

LOG = logging.getLogger(__name__)


class Reverter:
    """Undo registered steps, newest first, if the block raises."""

    def __init__(self):
        self._steps: list[Callable[[], object]] = []

    def add(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def __enter__(self) -> 'Reverter':
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            for step in reversed(self._steps):
                try:
                    step()
                except Exception:  # keep undoing; report the original error
                    LOG.exception('undo step %r failed', step)
        self._steps = []
        return False
