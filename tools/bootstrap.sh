#!/usr/bin/env bash
# Idempotent set-up of a development/test environment on Debian 12 (as root).
#
#   1. apt: installs the Debian packages below (skipped when all of them are
#      already installed, so re-runs are fast and work offline; skipped
#      entirely with IMAGEBACKEND_SKIP_APT=1);
#  1b. creates the system user ibunpriv, which the unprivileged functional
#      test runs the library as (no home, no login shell);
#   2. creates .venv in the project root from Debian's /usr/bin/python3
#      (re-created when it was built from another interpreter, e.g. pyenv);
#   3. symlinks only Debian's rados/rbd extension modules into the venv
#      (tools/link_system_modules.py, also used by tox);
#   4. pip install -e '.[test]' (skipped while .venv/.installed-<hash> exists;
#      the hash covers setup.cfg, setup.py, pyproject.toml and the list of
#      top-level packages, so adding e.g. driver/__init__.py re-installs);
#   5. downloads the nova 34.0.0 wheel into .venv/nova-wheel;
#   6. creates .venv-nova, a second virtualenv from the same python with
#      real Nova 34.0.0 (that wheel, its dependencies from PyPI, the test
#      requirements in tools/nova-requirements.txt) and this project, for
#      the tests that run Nova's own code on imagebackend.nova;
#   7. pip install tox into .venv, for the docs build (tox -e docs, which
#      tools/test.sh runs after the whole suite).
#
# Quiet when there is nothing to do; prints one line per step it performs and
# the full output of any step that fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
SYSTEM_PYTHON=/usr/bin/python3

APT_PACKAGES=(
    qemu-utils python3-venv python3-rbd python3-rados
    e2fsprogs dosfstools xfsprogs util-linux genisoimage ntfs-3g mtools
    pkg-config libvirt-dev gcc python3-dev
    rsync openssh-server openssh-client
    # Real storage for the Lvm, Rbd and Ploop backends (real-backends.md):
    # lvm2 on loop devices, a one-node Ceph on loopback, Debian's ploop.
    lvm2 ceph-mon ceph-osd ceph-common ploop btrfs-progs uuid-runtime
    # The unprivileged run starts its privsep daemon as Nova does:
    # sudo privsep-helper (tests/functional/test_unprivileged.py).
    sudo
)

# The user that test runs the library as (no home, no login).
UNPRIVILEGED_USER=ibunpriv

say() { echo "bootstrap: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

LOG="$(mktemp "${TMPDIR:-/tmp}/imagebackend-bootstrap.XXXXXX")"
trap 'rm -f "$LOG"' EXIT

# run_quiet DESCRIPTION CMD...: run CMD with its output captured; on failure
# print the captured output and exit with CMD's status.
run_quiet() {
    local desc="$1"; shift
    local rc=0
    "$@" >"$LOG" 2>&1 </dev/null || rc=$?
    if [ "$rc" -ne 0 ]; then
        say "ERROR: $desc failed (exit $rc): $*"
        cat "$LOG" >&2
        exit "$rc"
    fi
}

# --- 1. Debian packages ------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "${IMAGEBACKEND_SKIP_APT:-0}" = "1" ]; then
        say "IMAGEBACKEND_SKIP_APT=1: not installing missing packages: ${missing[*]}"
    else
        SUDO=()
        if [ "$(id -u)" -ne 0 ]; then
            command -v sudo >/dev/null 2>&1 \
                || die "not root and no sudo; install as root: apt-get install ${missing[*]}"
            SUDO=(sudo -n)
        fi
        say "installing Debian packages: ${missing[*]}"
        run_quiet "apt-get update" "${SUDO[@]}" apt-get -q update
        run_quiet "apt-get install" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

# --- 1b. the unprivileged test user -------------------------------------------
if ! getent passwd "$UNPRIVILEGED_USER" >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        say "creating system user $UNPRIVILEGED_USER (unprivileged test run)"
        run_quiet "useradd" useradd --system --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin "$UNPRIVILEGED_USER"
    else
        say "not root: not creating user $UNPRIVILEGED_USER (the test makes it)"
    fi
fi

# --- 2. virtualenv from Debian's python --------------------------------------
[ -x "$SYSTEM_PYTHON" ] || die "$SYSTEM_PYTHON not found (Debian's python3)"

venv_ok=0
if [ -x "$VENV/bin/python" ]; then
    base="$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)' 2>/dev/null || true)"
    [ "$base" = "/usr" ] && venv_ok=1
fi
if [ "$venv_ok" -ne 1 ]; then
    if [ -e "$VENV" ]; then
        say "re-creating .venv (not built from $SYSTEM_PYTHON)"
        rm -rf "$VENV"
    else
        say "creating .venv with $SYSTEM_PYTHON"
    fi
    run_quiet "venv creation" "$SYSTEM_PYTHON" -m venv "$VENV"
fi

# --- 3. Debian's rados/rbd modules, nothing else -----------------------------
"$VENV/bin/python" "$ROOT/tools/link_system_modules.py" \
    || die "could not expose Debian's rados/rbd modules in .venv"

# --- 4. editable install of the project with test extras ---------------------
cd "$ROOT"
stamp_hash="$(
    {
        cat setup.cfg
        cat setup.py pyproject.toml 2>/dev/null || true
        ls -1 -- */__init__.py 2>/dev/null || true
    } | sha256sum | cut -d' ' -f1
)"
stamp="$VENV/.installed-$stamp_hash"
if [ ! -e "$stamp" ]; then
    say "pip install -e '.[test]' into .venv"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    run_quiet "pip install" "$VENV/bin/python" -m pip install -q -e '.[test]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi

# --- 5. Nova's own option definitions, for the config co-registration test ---
# imagebackend's options must equal Nova's; the test loads Nova's conf modules
# (they need only oslo.config) from the released wheel, never a copy of ours.
NOVA_WHEEL_DIR="$VENV/nova-wheel"
if ! ls "$NOVA_WHEEL_DIR"/nova-34.0.0-*.whl >/dev/null 2>&1; then
    say "pip download nova==34.0.0 (wheel only, for tests/unit/test_config.py)"
    run_quiet "pip download nova" "$VENV/bin/python" -m pip download -q \
        --no-deps --only-binary :all: nova==34.0.0 -d "$NOVA_WHEEL_DIR"
fi

# --- 6. Nova's own code, in its own virtualenv --------------------------------
# Nova pins many libraries of its own; it does not share .venv. The project
# goes in editable and without dependencies (Nova brings the oslo libraries).
NOVA_VENV="$ROOT/.venv-nova"
nova_hash="$(
    { cat tools/nova-requirements.txt; ls "$NOVA_WHEEL_DIR"; echo "$stamp_hash"; } \
        | sha256sum | cut -d' ' -f1
)"
nova_stamp="$NOVA_VENV/.installed-$nova_hash"
if [ ! -e "$nova_stamp" ]; then
    if [ -x "$NOVA_VENV/bin/python" ] && [ "$("$NOVA_VENV/bin/python" -c \
            'import sys; print(sys.base_prefix)' 2>/dev/null || true)" = /usr ]; then
        :
    else
        rm -rf "$NOVA_VENV"
        say "creating .venv-nova with $SYSTEM_PYTHON (real Nova 34.0.0)"
        run_quiet "nova venv creation" "$SYSTEM_PYTHON" -m venv "$NOVA_VENV"
    fi
    "$NOVA_VENV/bin/python" "$ROOT/tools/link_system_modules.py" \
        || die "could not expose Debian's rados/rbd modules in .venv-nova"
    say "pip install nova 34.0.0 and its test requirements into .venv-nova"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    run_quiet "pip install nova" "$NOVA_VENV/bin/python" -m pip install -q \
        "$NOVA_WHEEL_DIR"/nova-34.0.0-*.whl -r tools/nova-requirements.txt
    run_quiet "pip install -e . (nova venv)" "$NOVA_VENV/bin/python" -m pip \
        install -q --no-deps -e .
    rm -f "$NOVA_VENV"/.installed-*
    touch "$nova_stamp"
fi

# --- 7. tox, for the docs build -----------------------------------------------
# tools/test.sh (no arguments: the whole suite, as CI runs it) builds the
# docs with `tox -e docs`, which makes its own environment from PyPI.
if [ ! -x "$VENV/bin/tox" ]; then
    say "pip install tox into .venv (for tox -e docs)"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    run_quiet "pip install tox" "$VENV/bin/python" -m pip install -q 'tox>=4'
fi
