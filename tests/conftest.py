"""Suite-wide pytest configuration.

Loads the skip guard (tests/skipguard.py): a skipped test fails the session
unless its node id is on tests/skip_allowlist.txt with a comment explaining
why.  Checks every qcow2 overlay the in-process writer makes against
qemu-img's (tests/overlay_check.py; ``IMAGEBACKEND_TEST_QCOW2_WRITER=off``
runs the suite with the writer off). Also the fixtures every test module
uses: a host (config), its Backend and an instance. Keep this file small.
"""

import pathlib

import pytest

import imagebackend

from imagebackend import qcow2_overlay

try:  # tests/ is a package
    from . import hosts, overlay_check, skipguard
except ImportError:  # tests/ is a plain directory on sys.path
    import hosts
    import overlay_check
    import skipguard
# The real Ceph cluster, registered here, once, for every directory that
# uses it (tests/functional, tests/nova): a session fixture imported into
# several modules is a separate fixture in each, and each would start its
# own cluster.
from tests.functional.ceph_env import ceph_cluster  # noqa: E402,F401

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Before any test makes a ConfigOpts, or starts a process that does.
QCOW2_WRITER = overlay_check.apply_switch()


def pytest_configure(config):
    if not config.pluginmanager.has_plugin(skipguard.PLUGIN_NAME):
        config.pluginmanager.register(skipguard, skipguard.PLUGIN_NAME)


OVERLAYS = overlay_check.Checker()


@pytest.fixture(autouse=True)
def _check_overlays(monkeypatch):
    """Every overlay the writer makes in a test is checked against
    qemu-img's at once (tests/overlay_check.py)."""
    monkeypatch.setattr(qcow2_overlay, 'write',
                        OVERLAYS.wrap(qcow2_overlay.write))


def pytest_report_header(config):
    return f'qcow2 overlay writer: {QCOW2_WRITER} ({overlay_check.SWITCH})'


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        f'qcow2 overlay writer {QCOW2_WRITER}: {OVERLAYS.checked} overlays '
        f'written in-process, each equal to qemu-img\'s; '
        f'{len(OVERLAYS.shapes)} shapes qemu-img checked')


def pytest_unconfigure(config):
    OVERLAYS.close()


@pytest.fixture
def host(tmp_path):
    """A host: instances_path, an image folder and a ConfigOpts for them."""
    inst_path = tmp_path / 'host' / 'instances'
    images = tmp_path / 'images'
    inst_path.mkdir(parents=True)
    images.mkdir()
    return hosts.make_conf(str(inst_path), str(images))


@pytest.fixture
def backend(host):
    return imagebackend.Backend(conf=host)


@pytest.fixture
def instance():
    return hosts.Instance()


@pytest.fixture(scope="session")
def repo_root():
    """Absolute path of the project's root directory."""
    return REPO_ROOT
