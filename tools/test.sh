#!/usr/bin/env bash
# Run the test suite: bash tools/test.sh [pytest arguments...]
#
# Sets the environment up first (tools/bootstrap.sh), then runs pytest with
# the project's virtualenv from the project root.  Exits with pytest's exit
# code, except that "no tests collected" (pytest exit code 5) is a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/bootstrap.sh"
cd "$ROOT"

rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "tools/test.sh: FAILED: pytest collected no tests (exit code 5)" >&2
    exit 1
fi
exit "$rc"
