"""Host-mode instance commands: arguments, help texts, an empty host
(the commands' work on a real host: tests/functional/test_host_cli_nova.py)."""

import json

import pytest

from driver import host_cli
from imagebackend import verify


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / 'nova.conf'
    path.write_text(f'[DEFAULT]\ninstances_path = {tmp_path}/instances\n')
    (tmp_path / 'instances' / '_base').mkdir(parents=True)
    return str(path)


def test_help_explains_each_command(capsys):
    parser = host_cli.build_parser()
    for argv, words in ((['adopt', '--help'], ['disk.info', '--dry-run',
                                                'undecided', 'lock']),
                        (['verify', '--help'], list(verify.KINDS)),
                        (['instance', 'show', '--help'],
                         ['format_inspector', 'Read-only'])):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        out = capsys.readouterr().out
        for word in words:
            assert word in out, (argv, word)


@pytest.mark.parametrize('targets', [[], ['--all', 'x' * 8]])
def test_instances_or_all_not_both(conf, capsys, targets):
    for command in ('adopt', 'verify'):
        assert host_cli.main(['--config-file', conf, '--json', command,
                              *targets]) == 2
        assert json.loads(capsys.readouterr().out)['error'] == \
            'InvalidInput'


def test_a_bad_uuid_is_refused(conf, capsys):
    assert host_cli.main(['--config-file', conf, 'verify', '../etc']) == 2
    assert 'InvalidDiskName' in capsys.readouterr().err


def test_empty_host_is_clean(conf, capsys):
    assert host_cli.main(['--config-file', conf, '--json', 'verify',
                          '--all']) == 0
    assert json.loads(capsys.readouterr().out) == {'clean': True,
                                                   'instances': []}
    assert host_cli.main(['--config-file', conf, '--json', 'adopt',
                          '--all']) == 0
    assert json.loads(capsys.readouterr().out)['disks'] == []


def test_an_instance_that_is_not_there(conf, capsys):
    uuid = '8a1e4a2c-5b0b-4a35-9a7f-2f0d8f7d6c11'
    for argv in (['verify', uuid], ['adopt', uuid], ['instance', 'show',
                                                     uuid]):
        assert host_cli.main(['--config-file', conf, '--json', *argv]) == 2
        out = json.loads(capsys.readouterr().out)
        assert out['error'] == 'InvalidInput'
        assert 'no instance directory' in out['message']
