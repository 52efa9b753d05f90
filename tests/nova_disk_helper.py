"""Nova's OWN image backend on instance directories, for mixed-host tests.

Run with the Nova venv's python (``<repo>/.venv-nova/bin/python``, made by
tools/bootstrap.sh), never the project's: it imports
``nova.virt.libvirt.imagebackend`` (real Nova 34.0.0), not the library.
argv[1] is a JSON list of jobs; stdout one JSON list of their results::

    {"op": "make" | "open",
     "instances_path": ..., "images_dir": ..., "uuid": ...,
     "conf": {"force_raw_images": false, ...},   # [DEFAULT] overrides
     "disks": [{"cls": "Flat"|"Qcow2", "name": "disk",
                "image_id": "img", "size": bytes}]}

A disk with ``"template": "ephemeral_1_0706d66"`` instead of ``image_id``
is an ephemeral or swap disk made from a template (see _cache_template).

``make`` calls ``cache()`` exactly as Nova's driver does for a root disk
(``_try_fetch_image_cache``: fetch_func=libvirt_utils.fetch_image,
filename=sha1(image id)), in the instance directory the driver made.
``open`` builds each disk as the driver does (``Flat(instance, name)``),
reports its ``driver_format`` and ``resolve_driver_format()``, then calls
the same ``cache()``, reporting whether anything was fetched or the disk
was touched. Both report disk.info as Nova's module reads it.

Only Glance is stubbed: its download copies ``<images_dir>/<id>.<fmt>``,
and its metadata says that format. Privsep runs in-process (as Nova's own
unit tests run it), since this runs without rootwrap.
"""

import hashlib
import json
import os
import shutil
import sys

# Python puts this script's directory (tests/) first on sys.path, where
# the project's tests/nova package would shadow the real nova.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path
               if os.path.abspath(p or os.curdir) != _HERE]


def _image_file(images_dir, image_id):
    for name in os.listdir(images_dir):
        stem, _dot, fmt = name.rpartition('.')
        if stem == image_id:
            return os.path.join(images_dir, name), fmt
    raise LookupError(image_id)


_CONFIGURED = []


class FakeGlance:
    """The image API Nova's images.fetch_to_raw talks to."""

    def __init__(self, images_dir):
        self.images_dir = images_dir
        self.downloads = []

    def get(self, context, image_href, **kwargs):
        path, fmt = _image_file(self.images_dir, image_href)
        return {'id': image_href, 'disk_format': fmt,
                'size': os.path.getsize(path), 'properties': {}}

    def download(self, context, image_href, dest_path=None, **kwargs):
        self.downloads.append(image_href)
        shutil.copyfile(_image_file(self.images_dir, image_href)[0],
                        dest_path)


class Instance:
    def __init__(self, uuid):
        self.uuid = uuid
        self.name = 'instance-' + uuid[:8]
        self.trusted_certs = None


def _stat(path):
    st = os.stat(path)
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def _cache_image(image, spec, ctx, fetched, instance):
    from nova.virt.libvirt import utils as libvirt_utils

    def fetch_func(context, target, image_id, trusted_certs=None):
        fetched.append(target)
        libvirt_utils.fetch_image(context, target, image_id, trusted_certs)
    image_id = spec['image_id']
    # As _try_fetch_image_cache calls it for the root disk.
    image.cache(fetch_func=fetch_func, context=ctx,
                filename=hashlib.sha1(image_id.encode()).hexdigest(),
                image_id=image_id, size=spec.get('size'),
                trusted_certs=instance.trusted_certs)


def _cache_template(image, spec, ctx, fetched):
    """An ephemeral or swap disk, as the driver's _create_image makes one:
    cache() with no image_id and the template's name (Qcow2: a template in
    _base and an overlay on it; Flat: the disk written directly). The
    template function writes a blank raw file of the disk's size (the
    driver's runs mkfs or mkswap on it: not needed here)."""
    def make_template(target, *args, **kwargs):
        fetched.append(target)
        with open(target, 'wb') as f:
            f.truncate(spec['size'])
    image.cache(fetch_func=make_template, context=ctx,
                filename=spec['template'], size=spec['size'])


def _report(image, report, before, fetched):
    report['fetched'] = fetched
    report['changed'] = (before is not None and
                         _stat(image.path) != before)
    report['driver_format_after'] = image.driver_format
    return report


def run_job(args):
    import nova.conf
    import nova.privsep
    from nova import context as nova_context
    from nova.virt import images
    from nova.virt.libvirt import imagebackend
    from nova.virt.libvirt import utils as libvirt_utils

    conf = nova.conf.CONF
    if not _CONFIGURED:
        conf([], project='nova', default_config_files=[])
        _CONFIGURED.append(True)
    conf.clear_override('force_raw_images')
    conf.clear_override('use_cow_images')
    conf.set_override('instances_path', args['instances_path'])
    conf.set_override('lock_path', os.path.join(args['instances_path'],
                                                'locks'),
                      group='oslo_concurrency')
    for key, value in args.get('conf', {}).items():
        conf.set_override(key, value)
    for key, value in args.get('libvirt', {}).items():
        conf.set_override(key, value, group='libvirt')
    nova.privsep.sys_admin_pctxt.client_mode = False
    glance = FakeGlance(args['images_dir'])
    images.IMAGE_API = glance

    ctx = nova_context.RequestContext('user', 'project')
    instance = Instance(args['uuid'])
    out = {'disks': {}}
    if args['op'] == 'make':
        # The driver's _create_image makes the directory first.
        os.makedirs(libvirt_utils.get_instance_path(instance), exist_ok=True)
    for spec in args['disks']:
        cls = getattr(imagebackend, spec['cls'])
        image = cls(instance, spec['name'])
        path = image.path
        before = _stat(path) if os.path.exists(path) else None
        report = {'path': path, 'exists': before is not None}
        if args['op'] == 'open':
            report['driver_format'] = image.driver_format
            report['resolved'] = image.resolve_driver_format()
        fetched = []
        if 'template' in spec:
            _cache_template(image, spec, ctx, fetched)
        else:
            _cache_image(image, spec, ctx, fetched, instance)
        out['disks'][spec['name']] = _report(image, report, before, fetched)
    info = os.path.join(args['instances_path'], args['uuid'], 'disk.info')
    if os.path.exists(info):
        with open(info) as f:
            out['disk_info'] = json.loads(f.read().rstrip())
    out['downloads'] = glance.downloads
    return out


if __name__ == '__main__':
    print(json.dumps([run_job(job) for job in json.loads(sys.argv[1])]))
