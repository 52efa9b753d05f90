"""A stand-in ``cryptsetup`` executable for tests, at the process boundary.

This kernel has no device-mapper, so no real dm-crypt mapping can be made.
:func:`install` writes a ``cryptsetup`` script into a directory the test
puts first on ``PATH``; the library runs it through its one process runner
exactly as it would run the real tool. The script records every call
(argv and stdin, one JSON line each, in ``<dir>/cryptsetup.log``) and
keeps mappings the way device-mapper shows them:

* ``create <target> <device> [--cipher=.. --key-size=.. --key-file=-]``:
  reads the key from stdin, then makes ``<mapper root>/<target>`` a symlink
  to ``<device>``, so the mapped "device" is usable (reads and writes reach
  the device: the fake maps, it does not encrypt). Exit 5 if the mapping
  exists, 4 if the device does not.
* ``remove <target>``: removes the mapping; exit 4 if there is none (what
  cryptsetup says for a missing device).
* ``resize <target>``: exit 4 if there is no such mapping.

``FAKE_CRYPTSETUP_FAIL=<action>`` in the environment makes that action fail
(exit 1, after recording the call), for failure paths. The mapper root is
``FAKE_CRYPTSETUP_MAPPER`` (the library's ``dmcrypt.MAPPER_ROOT``).

Standard library only.
"""

from __future__ import annotations

import json
import os
import sys

SCRIPT = '''#!%(python)s
import json, os, sys
args = sys.argv[1:]
data = sys.stdin.read() if '--key-file=-' in args else None
with open(%(log)r, 'a') as f:
    f.write(json.dumps({'argv': sys.argv[1:], 'stdin': data}) + '\\n')
root = os.environ.get('FAKE_CRYPTSETUP_MAPPER', '/dev/mapper')
action = args[0] if args else ''
positional = [a for a in args[1:] if not a.startswith('-')]
if os.environ.get('FAKE_CRYPTSETUP_FAIL') == action:
    sys.stderr.write('fake cryptsetup: %%s fails on purpose\\n' %% action)
    sys.exit(1)
target = os.path.join(root, positional[0]) if positional else None
if action == 'create':
    device = positional[1]
    if os.path.lexists(target):
        sys.stderr.write('Device %%s already exists.\\n' %% positional[0])
        sys.exit(5)
    if not os.path.exists(device) or not data:
        sys.stderr.write('Cannot use device %%s.\\n' %% device)
        sys.exit(4)
    os.makedirs(root, exist_ok=True)
    os.symlink(device, target)
elif action in ('remove', 'resize'):
    if not os.path.lexists(target):
        sys.stderr.write('Device %%s not found\\n' %% positional[0])
        sys.exit(4)
    if action == 'remove':
        os.unlink(target)
else:
    sys.stderr.write('fake cryptsetup: unknown action %%r\\n' %% action)
    sys.exit(1)
'''


def install(bin_dir: str) -> str:
    """Write the fake into ``bin_dir``; return its log's path."""
    os.makedirs(bin_dir, exist_ok=True)
    log = os.path.join(bin_dir, 'cryptsetup.log')
    path = os.path.join(bin_dir, 'cryptsetup')
    with open(path, 'w') as f:
        f.write(SCRIPT % {'python': sys.executable, 'log': log})
    os.chmod(path, 0o755)
    return log


def calls(log: str) -> list[dict]:
    """Every recorded call: {'argv': [...], 'stdin': str or None}."""
    try:
        with open(log) as f:
            return [json.loads(line) for line in f]
    except FileNotFoundError:
        return []
