"""The qemu-img command lines qemu.py builds: run by its functions and shown
by plans, so a plan lists exactly what creation runs."""

from imagebackend import qemu


def test_create_command_with_options_and_backing():
    assert qemu.create_command('/d', 'parallels', 8 << 20,
                               options={'cluster_size': '1048576'}) == (
        'qemu-img', 'create', '-q', '-f', 'parallels',
        '-o', 'cluster_size=1048576', '/d', str(8 << 20))
    assert qemu.create_command('/o', 'qcow2', None, backing='/b',
                               backing_fmt='raw') == (
        'qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', '/b',
        '/o')


def test_create_command_refuses_a_backing_file_without_format():
    try:
        qemu.create_command('/o', 'qcow2', backing='/b')
    except ValueError:
        return
    raise AssertionError('a backing file without -F was accepted')


def test_convert_command_flags():
    assert qemu.convert_command('/s', 'qcow2', '/d', 'raw', cache='none',
                                existing_target=True) == (
        'qemu-img', 'convert', '-q', '-f', 'qcow2', '-O', 'raw',
        '-t', 'none', '-n', '/s', '/d')
    assert qemu.convert_command('/s', 'raw', '/d', 'parallels',
                                target_is_zero=True,
                                existing_target=True) == (
        'qemu-img', 'convert', '-q', '-n', '--target-is-zero',
        '-f', 'raw', '-O', 'parallels', '/s', '/d')
    assert qemu.convert_command('/s', 'raw', '/d', 'raw',
                                src_cache='none') == (
        'qemu-img', 'convert', '-q', '-T', 'none', '-f', 'raw', '-O', 'raw',
        '/s', '/d')
    assert qemu.convert_command('/s', 'raw', '/d', 'qcow2',
                                compress=True)[-3] == '-c'


def test_resize_command():
    assert qemu.resize_command('/d', 'qcow2', 5) == (
        'qemu-img', 'resize', '-q', '-f', 'qcow2', '/d', '5')
