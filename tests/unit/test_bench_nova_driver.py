"""The nova_driver benchmark suite's pure parts: the process log's names
for a command, and the suite without Nova's virtualenv (skipped, with the
reason in its context, no error)."""

from __future__ import annotations

from benchmarks import env, process_log
from benchmarks.core import SuiteRun
from benchmarks.suites import nova_driver


def test_process_log_names_the_wrapped_command():
    prlimit = ['/venv/bin/python', '-m', 'oslo_concurrency.prlimit',
               '--as=1073741824', '--cpu=30', '--', 'env', 'LC_ALL=C',
               'LANG=C', 'qemu-img', 'info', '-f', 'raw', '/x']
    assert process_log.command(prlimit) == ['qemu-img', 'info', '-f', 'raw',
                                            '/x']
    assert process_log.command([b'cp', b'-r', b'/a', b'/b']) == [
        'cp', '-r', '/a', '/b']
    assert process_log.command('mkswap') == ['mkswap']
    assert process_log.is_qemu_img_info(['/usr/bin/qemu-img', 'info', '/x'])
    assert not process_log.is_qemu_img_info(['qemu-img', 'create', '/x'])


def test_suite_without_nova_venv_says_why(tmp_path, monkeypatch):
    missing = str(tmp_path / 'no-venv' / 'python')
    monkeypatch.setattr(nova_driver, 'NOVA_PYTHON', missing)
    result = SuiteRun(nova_driver.NAME)

    class Ctx:
        sizes = env.QUICK
        reps, warmup, quick, dir, envs = 5, 1, True, str(tmp_path), None

    nova_driver.run(Ctx, result)
    assert result.figures == []
    assert result.error is None
    assert missing in result.context['not_measured'][nova_driver.NAME]


def test_flavor_in_novas_units():
    assert nova_driver.flavor(env.FULL) == (10, 1, 512)
    assert nova_driver.flavor(env.QUICK) == (1, 1, 16)
