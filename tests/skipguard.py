"""Skip guard: in this project a test never passes by skipping.

A pytest plugin (loaded by tests/conftest.py) that records every skip:

* a test skipped in its setup or call phase (``pytest.skip()``, a
  ``skipif``/``skip`` mark, a fixture that skips, ``pytest.importorskip``
  inside a test), and
* a whole module or class skipped at collection time (module-level
  ``pytest.importorskip`` / ``pytest.skip(allow_module_level=True)``).

Expected failures (``xfail``) are not skips and are ignored.

At the end of the session every recorded skip whose node id is not on the
allow-list ``tests/skip_allowlist.txt`` (relative to pytest's rootdir) makes
the session fail (exit status 1), and the terminal summary lists those skips
with their reasons.

Allow-list format: one node id per line (as printed by pytest, e.g.
``tests/functional/test_rbd.py::test_clone``); lines starting with ``#`` are
comments; blank lines are ignored.  The line directly above each entry must be
a non-empty ``#`` comment explaining why that skip is acceptable; an entry
without one is an error (it does not allow anything and fails the session).
"""

import pathlib

import pytest

#: Name under which tests/conftest.py registers this module.
PLUGIN_NAME = "imagebackend-skipguard"
#: Name of the per-session state object (a ``SkipGuard``).
GUARD_NAME = "imagebackend-skipguard-state"
#: The allow-list, relative to pytest's rootdir.
ALLOWLIST = pathlib.Path("tests", "skip_allowlist.txt")


def parse_allowlist(text, source="skip_allowlist.txt"):
    """Parse allow-list text; return ``(set of node ids, list of errors)``."""
    entries = set()
    errors = []
    previous = ""
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            explained = (previous.startswith("#")
                         and previous.lstrip("#").strip() != "")
            if explained:
                entries.add(line)
            else:
                errors.append(
                    "%s:%d: entry %r is not directly preceded by a '#' "
                    "comment explaining why it may skip; it is ignored"
                    % (source, lineno, line))
        previous = line
    return entries, errors


def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = longrepr[2]
    else:
        reason = str(longrepr)
    if reason.startswith("Skipped: "):
        reason = reason[len("Skipped: "):]
    return reason


class SkipGuard:
    """Per-session state: the skips seen and the verdict."""

    def __init__(self, config):
        self.allowlist_path = config.rootpath / ALLOWLIST
        self.skips = {}        # node id -> reason
        self.unexpected = {}   # node id -> reason, filled at session finish
        self.errors = []

    def _record(self, report):
        self.skips.setdefault(report.nodeid, _skip_reason(report))

    def pytest_collectreport(self, report):
        if report.skipped:
            self._record(report)

    def pytest_runtest_logreport(self, report):
        if (report.skipped and report.when in ("setup", "call")
                and not hasattr(report, "wasxfail")):
            self._record(report)

    def _load_allowlist(self):
        try:
            text = self.allowlist_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return set(), []
        return parse_allowlist(text, str(self.allowlist_path))

    def pytest_sessionfinish(self, session):
        allowed, self.errors = self._load_allowlist()
        self.unexpected = {nodeid: reason
                           for nodeid, reason in self.skips.items()
                           if nodeid not in allowed}
        if self.unexpected or self.errors:
            if session.exitstatus in (pytest.ExitCode.OK,
                                      pytest.ExitCode.NO_TESTS_COLLECTED):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if not (self.unexpected or self.errors):
            return
        tr = terminalreporter
        tr.section("skip guard: the session FAILS", sep="=",
                   red=True, bold=True)
        if self.unexpected:
            tr.line("%d skip(s) not on the allow-list %s (a test never "
                    "passes by skipping):"
                    % (len(self.unexpected), self.allowlist_path))
            for nodeid, reason in sorted(self.unexpected.items()):
                tr.line("SKIPPED, NOT ALLOWED: %s - %s" % (nodeid, reason),
                        red=True)
            tr.line("Fix the cause (e.g. install what is missing), or add "
                    "the node id to the allow-list with a comment above it "
                    "explaining why the skip is acceptable.")
        for error in self.errors:
            tr.line("ALLOW-LIST ERROR: %s" % error, red=True)


def pytest_configure(config):
    if not config.pluginmanager.has_plugin(GUARD_NAME):
        config.pluginmanager.register(SkipGuard(config), GUARD_NAME)
