"""Every overlay the in-process writer makes in the suite, checked by qemu.

tests/conftest.py wraps :func:`imagebackend.qcow2_overlay.write` for every
test (in the test process; the CLI and Nova subprocesses a few tests start
are not wrapped, their overlays are the same function's). Each overlay the
writer makes is checked at once, before the test goes on:

* **byte for byte** against ``qemu-img create -u -f qcow2 -F <fmt> -b
  <name> <ref> <size>`` for the same request (``-u``: qemu-img does not
  open the base, so the reference can be made in a scratch directory
  whatever the name; its bytes are those of the plain command, which
  tests/functional/test_qcow2_overlay.py shows): one process per overlay.
  Equal bytes make ``qemu-img info`` equal field for field, filename
  aside.
* **qemu-img check** and **qemu-img info** on the writer's file, compared
  with the reference's info: once per shape (L1 table length, base format,
  backing name length and whether it is relative), since identical bytes
  check and describe identically. A test's overlays are mostly of a few
  shapes, so this adds a few processes per session, not per overlay.

The cost is one ``qemu-img create`` (~10 ms) per overlay the suite writes,
a few seconds for the whole suite. A mismatch fails the test that made the
overlay, with the first differing offset.

``IMAGEBACKEND_TEST_QCOW2_WRITER=off`` in the environment runs the suite
with the writer turned off (``[imagebackend] qcow2_overlay_writer``
defaults to false through oslo.config's environment source, also in
subprocesses): every overlay is then qemu-img's, except in the tests that
turn it on explicitly (the ``qcow2_overlay`` fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid

from imagebackend import qcow2_overlay

SWITCH = 'IMAGEBACKEND_TEST_QCOW2_WRITER'
# oslo.config's environment source: OS_<GROUP>__<OPTION>.
OPTION_ENV = 'OS_IMAGEBACKEND__QCOW2_OVERLAY_WRITER'


def apply_switch() -> str:
    """Turn the writer off for the session (and its subprocesses) if the
    environment asks; return 'on' or 'off'."""
    value = os.environ.get(SWITCH, 'on').lower()
    if value not in ('on', 'off'):
        raise ValueError(f'{SWITCH} must be on or off, not {value!r}')
    if value == 'off':
        os.environ[OPTION_ENV] = 'false'
    return value


class OverlayMismatch(AssertionError):
    pass


class Checker:
    """Wraps the writer; checks what it wrote (see the module docstring)."""

    def __init__(self) -> None:
        self._scratch: str | None = None
        self.shapes: set[tuple] = set()
        self.checked = 0

    @property
    def scratch(self) -> str:
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix='overlay-check-')
        return self._scratch

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def wrap(self, write):
        def checked_write(path, virtual_size, backing, backing_format,
                          **kwargs):
            write(path, virtual_size, backing, backing_format, **kwargs)
            self.verify(path, virtual_size, backing, backing_format)
        return checked_write

    def verify(self, path: str, size: int, backing: str, fmt: str) -> None:
        # A name of its own: threads in a test may write overlays at once.
        ref = os.path.join(self.scratch, f'{uuid.uuid4()}.qcow2')
        _run('qemu-img', 'create', '-q', '-u', '-f', 'qcow2', '-F', fmt,
             '-b', backing, ref, str(size))
        try:
            with open(path, 'rb') as a, open(ref, 'rb') as b:
                ours, theirs = a.read(), b.read()
            if ours != theirs:
                at = next((i for i, (x, y) in enumerate(zip(ours, theirs))
                           if x != y), min(len(ours), len(theirs)))
                raise OverlayMismatch(
                    f'{path}: the writer\'s overlay ({len(ours)} bytes) '
                    f'differs from qemu-img\'s ({len(theirs)} bytes) at '
                    f'offset {at}')
            shape = (qcow2_overlay.l1_entries(size), fmt,
                     len(os.fsencode(backing)), os.path.isabs(backing))
            if shape not in self.shapes:
                self._check_and_describe(path, ref)
                self.shapes.add(shape)
            self.checked += 1
        finally:
            os.unlink(ref)

    @staticmethod
    def _check_and_describe(path: str, ref: str) -> None:
        report = json.loads(_run('qemu-img', 'check', '--output=json', '-f',
                                 'qcow2', path))
        if report.get('check-errors') or report.get('corruptions') or \
                report.get('leaks'):
            raise OverlayMismatch(f'{path}: qemu-img check: {report}')
        infos = []
        for p in (path, ref):
            info = json.loads(_run('qemu-img', 'info', '--output=json',
                                   '--force-share', '-f', 'qcow2', p))
            # Names of the files (and what follows from where they are).
            for key in ('filename', 'full-backing-filename', 'actual-size'):
                info.pop(key, None)
            infos.append(info)
        if infos[0] != infos[1]:
            raise OverlayMismatch(f'{path}: qemu-img info {infos[0]} != '
                                  f'qemu-img\'s own overlay {infos[1]}')


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True,
                          text=True).stdout
