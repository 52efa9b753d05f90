"""Pure logic of the cache audit and the host-mode cache/plan commands."""

import argparse

import pytest

from imagebackend import cache_audit
from imagebackend import plans

from driver import cli_common


def test_status_is_the_worst_problem():
    entry = cache_audit.EntryAudit(name='x', path='/x')
    assert entry.status == cache_audit.OK and not entry.flagged
    entry.problems.append(cache_audit.Problem(cache_audit.UNVERIFIED,
                                              'no-sidecar', ''))
    assert entry.status == cache_audit.UNVERIFIED and entry.flagged
    entry.problems.append(cache_audit.Problem(cache_audit.HOSTILE, 'unsafe',
                                              ''))
    entry.problems.append(cache_audit.Problem(cache_audit.MODIFIED,
                                              'digest-mismatch', ''))
    assert entry.status == cache_audit.HOSTILE
    assert entry.to_dict()['status'] == 'hostile'


@pytest.mark.parametrize('parse, good, bad', [
    (cli_common.seconds, ('0', '3600', '1.5'), ('-1', 'x')),
    (cli_common.count, ('0', '20'), ('-1', '1.5', 'x'))])
def test_cli_numbers(parse, good, bad):
    for text in good:
        assert parse(text) == float(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_step_without_command_and_template_steps():
    assert plans.Step('copy').to_dict()['command'] is None

    class Tpl:
        def command(self, target):
            return ['mkswap', target]

    class Content:
        def commands(self, target, root):
            return [['mkfs.vfat', target], ['mcopy', root, target]]
    [step] = plans.write_with(Tpl(), '/t.part', 5)
    assert step.command == ('mkswap', '/t.part') and step.write_bytes == 5
    steps = plans.write_with(Content(), '/c', 7)
    assert [s.command for s in steps] == [
        ('mkfs.vfat', '/c'), ('mcopy', plans.TEMPORARY, '/c')]
    assert [s.write_bytes for s in steps] == [7, 0]
    [step] = plans.write_with(lambda target: None, '/t', None)
    assert step.command is None
