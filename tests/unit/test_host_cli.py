"""The CLI's real-host mode: dispatch and reading the host's config."""

import pytest

from driver import host as host_mod
from driver import host_cli
from imagebackend import exception


def test_config_file_selects_host_mode():
    assert host_cli.wanted(['--config-file', 'x', 'verify'])
    assert host_cli.wanted(['--config-dir=d', 'verify'])
    assert not host_cli.wanted(['--state-dir', 'x', 'list'])


def test_host_reads_nova_option_names(tmp_path):
    conf = tmp_path / 'nova.conf'
    conf.write_text(f'[DEFAULT]\ninstances_path = {tmp_path}/inst\n'
                    'use_cow_images = false\n'
                    '[libvirt]\nimages_type = qcow2\n'
                    '[api]\nan_option_we_do_not_know = 1\n')
    extra = tmp_path / 'nova.conf.d'
    extra.mkdir()
    (extra / '10-type.conf').write_text('[libvirt]\nimages_type = flat\n')
    host = host_mod.Host([str(conf)], [str(extra)])
    assert host.instances_path == f'{tmp_path}/inst'
    assert host.conf.use_cow_images is False
    assert host.conf.libvirt.images_type == 'flat'


def test_missing_config_file_is_a_typed_error(tmp_path):
    with pytest.raises(exception.InvalidConfig):
        host_mod.Host([str(tmp_path / 'absent.conf')])


def test_state_dir_mode_is_unchanged(tmp_path, capsys):
    from driver import cli
    assert cli.main(['--state-dir', str(tmp_path), '--json', 'list']) == 0
    assert capsys.readouterr().out.strip() == '[]'
