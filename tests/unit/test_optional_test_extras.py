"""The runtime package works without its test extras (fixtures, mock)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Runs in a fresh interpreter where importing 'fixtures' or 'mock' fails
# (sys.modules[name] = None makes 'import name' raise ImportError).
SCRIPT = r'''
import sys
for name in ('fixtures', 'mock'):
    sys.modules[name] = None
import importlib, pkgutil
import imagebackend
import imagebackend.backends
skip = {'imagebackend.fixture', 'imagebackend.nova'}  # nova: needs Nova
done = []
for pkg in (imagebackend, imagebackend.backends):
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):
        if info.name not in skip:
            importlib.import_module(info.name)
            done.append(info.name)
from imagebackend import backend
for image_type in backend.BACKENDS:
    backend.backend_class(image_type)
assert 'fixtures' not in [m for m in sys.modules if sys.modules[m]]
try:
    import imagebackend.fixture
except ImportError as e:
    print('FIXTURE-ERROR:', e)
else:
    print('FIXTURE-IMPORTED')
print('OK', len(done))
'''


def test_imports_without_test_extras():
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, '-c', SCRIPT], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert 'OK ' in out.stdout
    # The fixture itself says which extra it needs.
    assert 'FIXTURE-ERROR:' in out.stdout, out.stdout
    assert 'imagebackend[test]' in out.stdout, out.stdout
