#!/usr/bin/env bash
# Run the demo: bash tools/demo.sh [arguments for examples/spawn_demo.py...]
#
# Sets the environment up first (tools/bootstrap.sh), then runs
# examples/spawn_demo.py with the project's virtualenv from the project root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/bootstrap.sh"
cd "$ROOT"
exec .venv/bin/python examples/spawn_demo.py "$@"
