"""The image type names are declared once and every list derives from it."""

from imagebackend import backend as backend_mod
from imagebackend import backend_types
from imagebackend import config

from driver import cli

# Nova's [libvirt] images_type choices, in Nova's order.
NOVA_CHOICES = ('raw', 'flat', 'qcow2', 'lvm', 'rbd', 'ploop', 'default')


def test_one_declaration_of_backend_names():
    assert backend_types.KNOWN_TYPES == NOVA_CHOICES
    assert backend_mod.BACKENDS is backend_types.BACKENDS
    assert backend_mod.KNOWN_TYPES is backend_types.KNOWN_TYPES
    assert cli.BACKENDS is backend_types.KNOWN_TYPES
    opt = next(o for o in config.LIBVIRT_OPTS if o.dest == 'images_type')
    assert tuple(opt.type.choices) == NOVA_CHOICES


def test_cli_choices_are_the_declared_names():
    # Every --images-type / --backend option offers exactly the names.
    seen = []
    stack = [cli.build_parser()]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            if action.dest in ('images_type', 'backend'):
                seen.append(tuple(action.choices))
            for sub in (getattr(action, 'choices', None) or {}).values() \
                    if isinstance(action.choices, dict) else ():
                stack.append(sub)
    assert seen and all(c == NOVA_CHOICES for c in seen)
