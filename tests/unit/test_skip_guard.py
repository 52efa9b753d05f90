"""The skip guard (tests/skipguard.py): a skipped test fails the run.

Each test runs pytest in-process on a small generated project (``pytester``,
enabled with ``-p pytester`` in pytest.ini), loading the same plugin object
that tests/conftest.py registered for this run.
"""

import pytest

PLUGIN_NAME = "imagebackend-skipguard"

SKIPPING_MODULE = """
import pytest

def test_ok():
    pass

def test_skipped():
    pytest.skip("no ceph cluster here")
"""


@pytest.fixture
def skipguard(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin(PLUGIN_NAME)
    assert plugin is not None, "tests/conftest.py did not load the skip guard"
    return plugin


@pytest.fixture
def run(pytester, skipguard):
    pytester.makefile(".ini", pytest="[pytest]\n")

    def _run(*args):
        return pytester.runpytest_inprocess(*args, plugins=[skipguard])

    return _run


def write_allowlist(pytester, text):
    path = pytester.path / "tests" / "skip_allowlist.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)


def test_conftest_loads_the_guard(skipguard):
    assert skipguard.PLUGIN_NAME == PLUGIN_NAME


def test_unlisted_skip_fails_the_run(pytester, run):
    pytester.makepyfile(test_mod=SKIPPING_MODULE)
    result = run()
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*skip guard*",
        "SKIPPED, NOT ALLOWED: test_mod.py::test_skipped - "
        "no ceph cluster here",
    ])


def test_only_skips_fails_the_run(pytester, run):
    pytester.makepyfile(test_mod="""
        import pytest

        @pytest.mark.skip(reason="later")
        def test_skipped():
            pass
    """)
    result = run()
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_allowlisted_skip_does_not_fail(pytester, run):
    pytester.makepyfile(test_mod=SKIPPING_MODULE)
    write_allowlist(pytester, (
        "# header\n"
        "\n"
        "# needs a Ceph cluster, which this environment cannot provide\n"
        "test_mod.py::test_skipped\n"
    ))
    result = run()
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
    assert "skip guard" not in result.stdout.str()


def test_allowlist_entry_without_comment_is_rejected(pytester, run):
    pytester.makepyfile(test_mod=SKIPPING_MODULE)
    write_allowlist(pytester, "# header\n\ntest_mod.py::test_skipped\n")
    result = run()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "SKIPPED, NOT ALLOWED: test_mod.py::test_skipped*",
        "ALLOW-LIST ERROR: *:3: entry 'test_mod.py::test_skipped' is not "
        "directly preceded by a '#' comment*",
    ])


def test_setup_and_mark_skips_are_caught(pytester, run):
    pytester.makepyfile(test_mod="""
        import pytest

        @pytest.fixture
        def cluster():
            pytest.skip("fixture says no")

        def test_fixture_skip(cluster):
            pass

        @pytest.mark.skipif(True, reason="condition")
        def test_skipif():
            pass
    """)
    result = run()
    result.assert_outcomes(skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines_random([
        "SKIPPED, NOT ALLOWED: test_mod.py::test_fixture_skip - "
        "fixture says no",
        "SKIPPED, NOT ALLOWED: test_mod.py::test_skipif - condition",
    ])


def test_module_level_skip_is_caught(pytester, run):
    pytester.makepyfile(test_mod="""
        import pytest

        pytest.importorskip("no_such_module_for_skipguard")

        def test_never_collected():
            pass
    """)
    result = run()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "SKIPPED, NOT ALLOWED: test_mod.py - *no_such_module_for_skipguard*",
    ])


def test_xfail_is_not_a_skip(pytester, run):
    pytester.makepyfile(test_mod="""
        import pytest

        @pytest.mark.xfail(reason="known bug")
        def test_xfail():
            assert False

        def test_imperative_xfail():
            pytest.xfail("also known")
    """)
    result = run()
    result.assert_outcomes(xfailed=2)
    assert result.ret == pytest.ExitCode.OK
