"""Helpers for tests that start daemons (sshd, Ceph) and must stop them."""

import os


def session_members(sid: int) -> list[int]:
    """PIDs of live (not zombie) processes in session ``sid``: a daemon
    started in its own session and every child it forked."""
    found = []
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[3] the session id; Z = zombie.
        if int(fields[3]) == sid and fields[0] != 'Z':
            found.append(int(name))
    return found
