#!/usr/bin/env bash
# The main job: the imagebackend CLI end to end on the embedded default
# (images in a folder, local files, qcow2), two "hosts" on this machine.
#   bash tools/demo.sh            (state in $IMAGEBACKEND_STATE_DIR or
#                                  /var/tmp/imagebackend-demo)
# Sets the environment up first (tools/bootstrap.sh). Running it again
# spawns another instance and reuses the image cache.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/bootstrap.sh"
STATE="${IMAGEBACKEND_STATE_DIR:-/var/tmp/imagebackend-demo}"
NAME="demo-$(date +%Y%m%d-%H%M%S)-$$"

run() {
    printf '\n$ imagebackend %s\n' "$*"
    "$ROOT/.venv/bin/imagebackend" --state-dir "$STATE" "$@"
}

run image create-sample demo-image --size 1G
run host set host-b
run spawn --image demo-image --name "$NAME" --host host-a \
    --root-gb 2 --ephemeral-gb 1 --swap-mb 256 --config-drive
run resize "$NAME" --root-gb 4
run migrate "$NAME" --to host-b --ephemeral-gb 2 --swap-mb 512
run show "$NAME"
run cache list --host host-b
