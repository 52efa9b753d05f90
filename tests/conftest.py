"""Suite-wide pytest configuration.

Loads the skip guard (tests/skipguard.py): a skipped test fails the session
unless its node id is on tests/skip_allowlist.txt with a comment explaining
why.  Keep this file small; put fixtures next to the tests that use them.
"""

import pathlib

import pytest

try:  # tests/ is a package
    from . import skipguard
except ImportError:  # tests/ is a plain directory on sys.path
    import skipguard

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def pytest_configure(config):
    if not config.pluginmanager.has_plugin(skipguard.PLUGIN_NAME):
        config.pluginmanager.register(skipguard, skipguard.PLUGIN_NAME)


@pytest.fixture(scope="session")
def repo_root():
    """Absolute path of the project's root directory."""
    return REPO_ROOT
