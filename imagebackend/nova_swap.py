"""Put the library's Nova face in place of ``nova.virt.libvirt.imagebackend``.

Call :func:`install` once, before Nova's libvirt driver is imported::

    import imagebackend.nova_swap; imagebackend.nova_swap.install()

It registers :mod:`imagebackend.nova` in ``sys.modules`` under Nova's name
*before* running it: the face imports ``nova.virt.libvirt.config``, whose
package imports Nova's driver, which imports the image backend module by
name, and must find the face there, not load Nova's own. Nothing of Nova is
patched; only ``sys.modules`` changes. This module imports nothing of Nova
itself, so the library stays importable without Nova.
"""

from __future__ import annotations

import importlib.util
import sys
import types

NOVA_NAME = 'nova.virt.libvirt.imagebackend'
FACE_NAME = 'imagebackend.nova'


class AlreadyImported(RuntimeError):
    """Nova's own image backend module was imported before install()."""


def install() -> types.ModuleType:
    """Make ``nova.virt.libvirt.imagebackend`` the library's face; return it.

    Idempotent. Raises :class:`AlreadyImported` if Nova's own module is
    already loaded (Nova's driver would keep using it)."""
    current = sys.modules.get(NOVA_NAME)
    face = sys.modules.get(FACE_NAME)
    if current is not None:
        if current is face:
            return face
        raise AlreadyImported(
            f'{NOVA_NAME} was imported before imagebackend.nova_swap.install()'
            '; call it before anything imports nova.virt.libvirt')
    if face is None:
        spec = importlib.util.find_spec(FACE_NAME)
        face = importlib.util.module_from_spec(spec)
        sys.modules[FACE_NAME] = face
        sys.modules[NOVA_NAME] = face
        try:
            spec.loader.exec_module(face)
        except BaseException:
            del sys.modules[FACE_NAME]
            del sys.modules[NOVA_NAME]
            raise
    else:
        sys.modules[NOVA_NAME] = face
    # What the import system does for any submodule it loads: the package
    # names it (``from nova.virt.libvirt import imagebackend``).
    package, _, attr = NOVA_NAME.rpartition('.')
    setattr(importlib.import_module(package), attr, face)
    return face
