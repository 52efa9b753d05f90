"""A real sshd on 127.0.0.1 for rsync-over-ssh tests.

:func:`running_sshd` starts ``/usr/sbin/sshd -D -e -f <config>`` on a free
port with its own host key, a client key allowed to log in (as the user
running the tests) and a known_hosts file holding the host key; it stops
the daemon by its PID afterwards and checks nothing is left running.
:func:`sshd_server` is the module-scoped fixture around it; import it into
a test module to use it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from typing import Iterator, NamedTuple

import pytest

from tests.daemons import session_members

SSHD = '/usr/sbin/sshd'
PRIVSEP_DIR = '/run/sshd'   # sshd refuses to start without it
START_DEADLINE = 10.0       # seconds to wait for the port to accept


class SshServer(NamedTuple):
    port: int
    client_key: str
    known_hosts: str


def free_port() -> int:
    """A port nothing listens on now (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _keygen(path: str) -> None:
    subprocess.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C',
                    'imagebackend-test', '-f', path], check=True,
                   capture_output=True)


def _config(d: str, port: int) -> str:
    path = os.path.join(d, 'sshd_config')
    with open(path, 'w') as f:
        f.write(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile none
AuthorizedKeysFile {d}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
""")
    return path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen) -> None:
    """Stop sshd by its PID (TERM, then KILL), then any forked child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # Connection children live in sshd's own session (start_new_session);
    # a finished transfer has ended them, but make sure.
    for pid in session_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _start(d: str, port: int, log) -> subprocess.Popen:
    config = _config(d, port)
    subprocess.run([SSHD, '-t', '-f', config], check=True,
                   capture_output=True)
    return subprocess.Popen([SSHD, '-D', '-e', '-f', config],
                            stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


@contextlib.contextmanager
def running_sshd(d: str) -> Iterator[SshServer]:
    """Run sshd with keys and config in directory ``d``."""
    os.makedirs(PRIVSEP_DIR, exist_ok=True)
    _keygen(os.path.join(d, 'host_key'))
    client_key = os.path.join(d, 'client_key')
    _keygen(client_key)
    authorized = os.path.join(d, 'authorized_keys')
    with open(client_key + '.pub') as src, open(authorized, 'w') as dst:
        dst.write(src.read())
    os.chmod(authorized, 0o600)
    with open(os.path.join(d, 'host_key.pub')) as f:
        host_key = ' '.join(f.read().split()[:2])

    log_path = os.path.join(d, 'sshd.log')
    with open(log_path, 'ab') as log:
        proc = port = None
        # The port is free when picked, but another job may take it before
        # sshd binds it: then sshd exits, and another port is tried.
        for _attempt in range(5):
            port = free_port()
            proc = _start(d, port, log)
            deadline = time.monotonic() + START_DEADLINE
            while proc.poll() is None and time.monotonic() < deadline:
                if _accepts(port):
                    break
                time.sleep(0.02)
            if proc.poll() is None and _accepts(port):
                break
            _stop(proc)
        else:
            with open(log_path) as f:
                raise RuntimeError(f'sshd did not start:\n{f.read()}')

    known_hosts = os.path.join(d, 'known_hosts')
    with open(known_hosts, 'w') as f:
        f.write(f'[127.0.0.1]:{port} {host_key}\n')
    try:
        yield SshServer(port, client_key, known_hosts)
    finally:
        _stop(proc)
        assert proc.returncode is not None
        assert not os.path.exists(f'/proc/{proc.pid}'), \
            f'sshd (pid {proc.pid}) still exists'
        assert session_members(proc.pid) == [], 'sshd left processes'


@pytest.fixture(scope='module')
def sshd_server(tmp_path_factory) -> Iterator[SshServer]:
    """(port, client_key, known_hosts) of an sshd on 127.0.0.1."""
    with running_sshd(str(tmp_path_factory.mktemp('sshd'))) as server:
        yield server
