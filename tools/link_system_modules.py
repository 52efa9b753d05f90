"""Expose Debian's ``rados`` and ``rbd`` modules (and nothing else) in a venv.

Run it with the virtualenv's interpreter, e.g. ``.venv/bin/python
tools/link_system_modules.py`` (tools/bootstrap.sh) or ``{envpython}
tools/link_system_modules.py`` (tox ``commands_pre``).  It symlinks
``rados.<EXT_SUFFIX>`` and ``rbd.<EXT_SUFFIX>`` from Debian's
``/usr/lib/python3/dist-packages`` into the running interpreter's purelib
directory, so the venv does not need ``--system-site-packages``.

The modules come from the apt packages python3-rados and python3-rbd and are
built for Debian's /usr/bin/python3; the venv must be created from that
interpreter.  Idempotent: correct links are left alone, wrong or dangling
links are replaced.  Exits non-zero (with a message) when a module is missing
or cannot be imported afterwards.
"""

import importlib
import os
import sys
import sysconfig

SYSTEM_DIR = "/usr/lib/python3/dist-packages"
MODULES = ("rados", "rbd")


def main():
    if sys.prefix == sys.base_prefix:
        print("link_system_modules: not running inside a virtualenv "
              "(sys.prefix == sys.base_prefix == %s); refusing to touch it"
              % sys.prefix, file=sys.stderr)
        return 1

    site_dir = sysconfig.get_paths()["purelib"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    errors = []
    for name in MODULES:
        src = os.path.join(SYSTEM_DIR, name + suffix)
        dst = os.path.join(site_dir, name + suffix)
        if not os.path.exists(src):
            errors.append("%s not found (apt-get install python3-%s; the venv "
                          "must be created from /usr/bin/python3)" % (src, name))
            continue
        if os.path.islink(dst) and os.readlink(dst) == src:
            continue
        if os.path.lexists(dst):
            os.unlink(dst)
        os.symlink(src, dst)

    if not errors:
        importlib.invalidate_caches()
        for name in MODULES:
            try:
                importlib.import_module(name)
            except Exception as exc:  # ImportError, or a broken librados
                errors.append("import %s failed after linking: %s"
                              % (name, exc))

    for error in errors:
        print("link_system_modules: " + error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
