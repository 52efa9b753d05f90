"""The image type names, declared once.

A leaf module (it imports nothing of the library) so that both the option
definition in :mod:`imagebackend.config` and the factory in
:mod:`imagebackend.backend` can read it without an import cycle.
"""

# image type -> "module:Class"; imported on first use. In Nova's order of
# ``[libvirt] images_type`` choices ('raw' is Nova's alias of 'flat').
BACKENDS = {
    'raw': 'imagebackend.backends.flat:Flat',
    'flat': 'imagebackend.backends.flat:Flat',
    'qcow2': 'imagebackend.backends.qcow2:Qcow2',
    'lvm': 'imagebackend.backends.lvm:Lvm',
    'rbd': 'imagebackend.backends.rbd:Rbd',
    'ploop': 'imagebackend.backends.ploop:Ploop',
}
# Every name ``[libvirt] images_type`` accepts, exactly Nova's choices:
# 'default' means qcow2 or flat by ``use_cow_images``.
KNOWN_TYPES = tuple(BACKENDS) + ('default',)
