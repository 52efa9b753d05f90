"""imagebackend.nova_swap: the face in place of Nova's module, by sys.modules.

Runs in .venv-nova (real Nova 34.0.0) in a subprocess: Nova's driver must
bind the face, and Nova's own module must never be loaded.
"""

import os
import subprocess
import textwrap

from tests.nova.test_nova_unittests import NOVA_PYTHON, ROOT


def run_nova(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS='ignore')
    return subprocess.run([NOVA_PYTHON, '-c', textwrap.dedent(code)],
                          env=env, capture_output=True, text=True,
                          timeout=300)


def test_novas_driver_binds_the_face_and_never_loads_novas_module():
    proc = run_nova('''
        import sys
        import imagebackend.nova_swap
        face = imagebackend.nova_swap.install()
        assert imagebackend.nova_swap.install() is face   # idempotent
        from nova.virt.libvirt import driver
        from nova.virt.libvirt import imagebackend
        assert driver.imagebackend is face, driver.imagebackend
        assert imagebackend is face
        assert face.__file__.endswith('imagebackend/nova.py'), face.__file__
        # Nova's own module's source was never run.
        assert not any(getattr(m, '__file__', '') and m.__file__.endswith(
            'nova/virt/libvirt/imagebackend.py')
            for m in list(sys.modules.values()))
        print('ok')
    ''')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == 'ok'


def test_install_after_novas_module_was_imported_refuses():
    proc = run_nova('''
        import nova.virt.libvirt.imagebackend
        import imagebackend.nova_swap
        try:
            imagebackend.nova_swap.install()
        except imagebackend.nova_swap.AlreadyImported as e:
            print('refused:', e)
    ''')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith('refused: nova.virt.libvirt.imagebackend')


def test_backend_returns_novas_classes_and_nova_errors():
    proc = run_nova('''
        import imagebackend.nova_swap
        face = imagebackend.nova_swap.install()
        from nova import exception
        import nova.conf
        CONF = nova.conf.CONF
        backend = face.Backend(use_cow=True)
        cls = backend.backend()             # Nova's driver reads the class
        assert cls is face.Qcow2, cls
        assert cls.SUPPORTS_LUKS is False and cls.SUPPORTS_CLONE is False
        assert backend.backend('rbd').SUPPORTS_CLONE is True
        assert backend.backend('rbd').is_shared_block_storage()
        assert backend.backend('raw') is face.Flat
        assert face.Flat.is_file_in_instance_path()
        try:
            backend.backend('nope')
        except RuntimeError as e:
            print('unknown:', e)
    ''')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'unknown: Unknown image_type=nope' in proc.stdout


def test_encryption_required_is_novas_internal_error_never_a_plain_disk(
        tmp_path):
    proc = run_nova(f'''
        import imagebackend.nova_swap
        face = imagebackend.nova_swap.install()
        from nova import exception, objects
        import nova.conf
        CONF = nova.conf.CONF
        objects.register_all()
        CONF.set_override('instances_path', {str(tmp_path)!r})
        CONF.set_override('enabled', True, 'ephemeral_storage_encryption')
        instance = objects.Instance(
            uuid='8b1e2a5c-3f0d-4c51-9a4e-5d6f7a8b9c0d')
        for name in ('disk', 'disk.local', 'disk.swap'):
            try:
                face.Qcow2(instance, name)
            except exception.InternalError as e:
                print('refused', name)
        face.Flat(instance, 'disk.config')    # Nova's loophole, kept
        print('config drive ok')
    ''')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split('\n')[:4] == [
        'refused disk', 'refused disk.local', 'refused disk.swap',
        'config drive ok']


def test_disk_smaller_than_its_image_fails_the_build_as_nova_says(tmp_path):
    # Nova's compute manager fails a build on FlavorDiskSmallerThanImage and
    # reschedules on anything else: the library's DiskTooSmall must leave
    # the face as Nova's type, with the library's error as its cause.
    proc = run_nova(f'''
        import imagebackend.nova_swap
        face = imagebackend.nova_swap.install()
        from imagebackend import exception as lib_exception
        from nova import exception, objects
        import nova.conf
        CONF = nova.conf.CONF
        objects.register_all()
        CONF.set_override('instances_path', {str(tmp_path)!r})
        instance = objects.Instance(
            uuid='8b1e2a5c-3f0d-4c51-9a4e-5d6f7a8b9c0d')

        def fetch(target, *args, **kwargs):
            with open(target, 'wb') as f:
                f.truncate(4 * 1024 * 1024)

        disk = face.Backend(use_cow=True).by_name(instance, 'disk')
        try:
            disk.cache(fetch, 'base', 1024 * 1024, image_id='base')
        except exception.FlavorDiskSmallerThanImage as e:
            assert isinstance(e.__cause__, lib_exception.DiskTooSmall)
            print('refused:', e.kwargs['flavor_size'], e.kwargs['image_size'])
        print('made:', disk.exists())
    ''')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split('\n')[:2] == ['refused: 1048576 4194304',
                                          'made: False']
