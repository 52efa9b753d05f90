"""Tests for imagebackend.processes: the one process runner."""

import os
import threading
from unittest import mock

import pytest
from oslo_concurrency import processutils

from imagebackend import exception
from imagebackend import processes


def test_execute_returns_stdout_and_stderr():
    out, err = processes.execute('sh', '-c', 'echo hello; echo warn >&2')
    assert out == 'hello\n'
    assert err == 'warn\n'


def test_failing_command_raises_process_error():
    with pytest.raises(exception.ProcessError) as e:
        processes.execute('sh', '-c', 'echo out; echo err >&2; exit 3')
    err = e.value
    assert err.exit_code == 3
    assert err.stdout == 'out'
    assert err.stderr == 'err'
    assert err.cmd == 'sh -c echo out; echo err >&2; exit 3'
    assert 'exit code 3' in str(err)
    assert 'stderr: err' in str(err)
    assert isinstance(err, exception.ImageBackendError)


def test_accepted_exit_codes():
    out, _err = processes.execute('sh', '-c', 'echo x; exit 3',
                                  check_exit_code=[0, 3])
    assert out == 'x\n'
    processes.execute('false', check_exit_code=False)


def test_missing_binary_raises_process_error():
    with pytest.raises(exception.ProcessError) as e:
        processes.execute('/nonexistent/imagebackend-no-such-binary', '-x')
    assert e.value.cmd == '/nonexistent/imagebackend-no-such-binary -x'
    # It never started: no exit code, the OS error is the stderr.
    assert e.value.exit_code is None
    assert 'No such file or directory' in e.value.stderr


def test_missing_binary_on_path_raises_process_error():
    with pytest.raises(exception.ProcessError):
        processes.execute('imagebackend-no-such-binary-on-path')


def test_environment_keeps_path_and_sets_c_locale(monkeypatch):
    monkeypatch.setenv('IMAGEBACKEND_TEST_MARKER', 'kept')
    monkeypatch.setenv('LC_ALL', 'de_DE.UTF-8')
    monkeypatch.setenv('LANG', 'de_DE.UTF-8')
    out, _err = processes.execute('env')
    env = dict(line.split('=', 1) for line in out.splitlines()
               if '=' in line)
    assert env['PATH'] == os.environ['PATH']
    assert env['LC_ALL'] == 'C'
    assert env['LANG'] == 'C'
    assert env['IMAGEBACKEND_TEST_MARKER'] == 'kept'


def test_process_environment_is_not_changed():
    before = dict(os.environ)
    processes.execute('true')
    assert dict(os.environ) == before


def test_arguments_are_strings_and_passed_through():
    limits = processutils.ProcessLimits(cpu_time=5)
    with mock.patch.object(processutils, 'execute',
                           return_value=('o', 'e')) as m:
        with processes.recording() as commands:
            assert processes.execute('qemu-img', 'resize', 1024,
                                     prlimit=limits,
                                     process_input=b'in') == ('o', 'e')
    assert commands == [('qemu-img', 'resize', '1024')]
    args, kwargs = m.call_args
    assert args == ('qemu-img', 'resize', '1024')
    assert kwargs['prlimit'] is limits
    assert kwargs['process_input'] == b'in'
    assert kwargs['check_exit_code'] is True
    assert kwargs['env_variables']['LC_ALL'] == 'C'


def test_process_execution_error_is_translated():
    exc = processutils.ProcessExecutionError(stdout=' o \n', stderr=None,
                                             exit_code=2, cmd='x')
    with mock.patch.object(processutils, 'execute', side_effect=exc):
        with pytest.raises(exception.ProcessError) as e:
            processes.execute('x', 'y')
    assert (e.value.cmd, e.value.exit_code, e.value.stdout,
            e.value.stderr) == ('x y', 2, 'o', '')


def test_recording_sees_commands_from_several_threads():
    barrier = threading.Barrier(8)
    errors = []

    def run(i):
        try:
            barrier.wait()
            processes.execute('echo', f'thread-{i}')
        except BaseException as e:  # reported below
            errors.append(e)

    with processes.recording() as commands:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert sorted(commands) == sorted(('echo', f'thread-{i}')
                                      for i in range(8))


def test_recording_records_failed_commands_too():
    with processes.recording() as commands:
        with pytest.raises(exception.ProcessError):
            processes.execute('false')
    assert commands == [('false',)]


def test_nested_recordings_and_scope():
    processes.execute('true')  # before: seen by nobody
    with processes.recording() as outer:
        processes.execute('echo', '1')
        with processes.recording() as inner:
            processes.execute('echo', '2')
        processes.execute('echo', '3')
    processes.execute('echo', '4')  # after: seen by nobody
    assert outer == [('echo', '1'), ('echo', '2'), ('echo', '3')]
    assert inner == [('echo', '2')]


def test_recording_is_removed_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with processes.recording() as commands:
            raise RuntimeError('boom')
    processes.execute('true')
    assert commands == []
