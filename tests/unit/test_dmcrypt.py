"""imagebackend.dmcrypt at the process boundary.

This kernel has no device-mapper, so these tests put a fake ``cryptsetup``
(tests/fake_cryptsetup.py) first on ``PATH``: the module runs it through
the real process runner, and the fake records argv and stdin and keeps
"mappings" as symlinks under a temporary mapper root.
"""

from __future__ import annotations

import binascii
import os

import pytest

from imagebackend import dmcrypt
from imagebackend import exception
from imagebackend import processes

try:
    from .. import fake_cryptsetup
except ImportError:
    import fake_cryptsetup

KEY = bytes(range(32))
HEX_KEY = binascii.hexlify(KEY).decode()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake cryptsetup first on PATH; mappings under tmp_path/mapper."""
    log = fake_cryptsetup.install(str(tmp_path / 'bin'))
    mapper = tmp_path / 'mapper'
    monkeypatch.setenv('PATH', f'{tmp_path / "bin"}{os.pathsep}'
                       f'{os.environ["PATH"]}')
    monkeypatch.setenv('FAKE_CRYPTSETUP_MAPPER', str(mapper))
    monkeypatch.setattr(dmcrypt, 'MAPPER_ROOT', str(mapper))
    device = tmp_path / 'device'
    device.write_bytes(b'\0' * 4096)

    class Fake:
        pass
    f = Fake()
    f.log, f.mapper, f.device = log, mapper, str(device)
    f.calls = lambda: fake_cryptsetup.calls(log)
    return f


def test_names():
    assert dmcrypt.volume_name('u_disk') == 'u_disk-dmcrypt'
    assert dmcrypt.base_name('u_disk-dmcrypt') == 'u_disk'
    assert dmcrypt.volume_path('u_disk-dmcrypt') == \
        '/dev/mapper/u_disk-dmcrypt'
    assert dmcrypt.is_encrypted('/dev/mapper/u_disk-dmcrypt')
    assert not dmcrypt.is_encrypted('/dev/vg/u_disk-dmcrypt')
    assert not dmcrypt.is_encrypted('/dev/mapper/u_disk')


@pytest.mark.parametrize('name', ['', 'a/b', '-x', '..', 'a b'])
def test_bad_names_refused(name):
    with pytest.raises(exception.InvalidInput):
        dmcrypt.volume_path(name)
    with pytest.raises(exception.InvalidInput):
        dmcrypt.delete_volume(name)


def test_base_name_refuses_other_names():
    with pytest.raises(exception.InvalidInput):
        dmcrypt.base_name('u_disk')


def test_create_key_on_stdin_never_in_argv(fake):
    with processes.recording() as commands:
        dmcrypt.create_volume('lv-dmcrypt', fake.device, 'aes-xts-plain64',
                              512, KEY)
    # Nova's command (nova.privsep.libvirt.dmcrypt_create_volume).
    argv = ['create', 'lv-dmcrypt', fake.device, '--cipher=aes-xts-plain64',
            '--key-size=512', '--key-file=-']
    assert fake.calls() == [{'argv': argv, 'stdin': HEX_KEY}]
    assert commands == [('cryptsetup', *argv)]
    for arg in commands[0]:
        assert HEX_KEY not in arg and KEY.decode('latin-1') not in arg
    assert os.readlink(fake.mapper / 'lv-dmcrypt') == fake.device
    assert dmcrypt.list_volumes() == ['lv-dmcrypt']


def test_create_failure_is_typed_without_key(fake, monkeypatch):
    monkeypatch.setenv('FAKE_CRYPTSETUP_FAIL', 'create')
    with pytest.raises(exception.ProcessError) as e:
        dmcrypt.create_volume('lv-dmcrypt', fake.device, 'aes-xts-plain64',
                              512, KEY)
    assert e.value.exit_code == 1
    assert HEX_KEY not in str(e.value)
    assert dmcrypt.list_volumes() == []


def test_delete_and_missing_is_no_error(fake):
    dmcrypt.create_volume('lv-dmcrypt', fake.device, 'aes-cbc-essiv:sha256',
                          256, KEY)
    dmcrypt.delete_volume('lv-dmcrypt')
    assert dmcrypt.list_volumes() == []
    dmcrypt.delete_volume('lv-dmcrypt')  # exit 4: already gone
    assert [c['argv'] for c in fake.calls()[1:]] == [
        ['remove', 'lv-dmcrypt'], ['remove', 'lv-dmcrypt']]


def test_delete_other_failure_raises(fake, monkeypatch):
    dmcrypt.create_volume('lv-dmcrypt', fake.device, 'aes-xts-plain64',
                          512, KEY)
    monkeypatch.setenv('FAKE_CRYPTSETUP_FAIL', 'remove')
    with pytest.raises(exception.ProcessError):
        dmcrypt.delete_volume('lv-dmcrypt')
    assert dmcrypt.list_volumes() == ['lv-dmcrypt']


def test_resize(fake):
    dmcrypt.create_volume('lv-dmcrypt', fake.device, 'aes-xts-plain64',
                          512, KEY)
    dmcrypt.resize_volume('lv-dmcrypt')
    assert fake.calls()[-1] == {'argv': ['resize', 'lv-dmcrypt'],
                                'stdin': None}


def test_list_volumes_only_ours(fake):
    assert dmcrypt.list_volumes() == []  # no mapper directory at all
    fake.mapper.mkdir()
    (fake.mapper / 'control').touch()
    (fake.mapper / 'vg-lv').touch()
    (fake.mapper / 'b-dmcrypt').touch()
    (fake.mapper / 'a-dmcrypt').touch()
    assert dmcrypt.list_volumes() == ['a-dmcrypt', 'b-dmcrypt']
