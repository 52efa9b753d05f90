#!/usr/bin/env bash
# Run the test suite: bash tools/test.sh [pytest arguments...]
#
# Sets the environment up first (tools/bootstrap.sh), then runs pytest with
# the project's virtualenv from the project root.  Exits with pytest's exit
# code, except that "no tests collected" (pytest exit code 5) is a failure.
#
# Without arguments (the whole suite, what CI runs) it also builds the docs
# with `tox -e docs` (Sphinx, warnings are errors) and fails if either fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/bootstrap.sh"
cd "$ROOT"

whole_suite=0
[ "$#" -eq 0 ] && whole_suite=1

rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "tools/test.sh: FAILED: pytest collected no tests (exit code 5)" >&2
    rc=1
fi

if [ "$whole_suite" -eq 1 ]; then
    docs_rc=0
    .venv/bin/tox -q -e docs </dev/null || docs_rc=$?
    if [ "$docs_rc" -ne 0 ]; then
        echo "tools/test.sh: FAILED: tox -e docs exited with $docs_rc" >&2
        [ "$rc" -ne 0 ] || rc=$docs_rc
    fi
fi
exit "$rc"
