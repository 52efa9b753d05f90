"""oslo.config options for imagebackend.

Most options here are Nova's own: the same names, groups, types, defaults
and help text as ``nova/conf/{paths,compute,libvirt,imagecache,
workarounds,ephemeral_storage}.py``, so that a deployment configures imagebackend with the
``nova.conf`` it already has.

The definitions must be *equal* to Nova's, not merely similar. Nova and
imagebackend may register the same option in one process (Nova importing
this library, or both being loaded by a test runner), and oslo.config only
tolerates a second registration of an option whose definition compares equal
to the first (``Opt.__eq__`` compares the whole of ``vars(opt)``: help,
default, choices, min, deprecated names and groups, deprecated_for_removal,
sample_default, ...). Any difference, even one character of help text, makes
the second ``register_opts`` raise ``DuplicateOptError``. So each Nova
option below is a verbatim copy of Nova's definition (Nova 34.0.0); when
Nova changes an option, the copy here must change with it. Do not reflow,
reword or "fix" these definitions.

Options that exist only in imagebackend live in the ``[imagebackend]`` group,
which Nova does not have, so they can never collide.
"""

from __future__ import annotations

import importlib.util
import os

from oslo_config import cfg

from imagebackend import backend_types

CONF = cfg.CONF


def _nova_pybasedir() -> str:
    """Nova's ``[DEFAULT]/pybasedir`` default, computed the way Nova does.

    Nova's ``state_path`` defaults to ``$pybasedir``, and ``pybasedir``
    defaults to the directory Nova's python package is installed in
    (``abspath(nova/conf/../../)``). To be equal to Nova's option, ours must
    come up with the same string when Nova is installed; find_spec() locates
    the package without importing it. Without Nova the value only has to be
    sensible, so use the directory imagebackend is installed in, which is what
    the option means for Nova. Deployments should set ``state_path`` or
    ``instances_path`` explicitly anyway.
    """
    try:
        spec = importlib.util.find_spec('nova')
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        pkg_dir = list(spec.submodule_search_locations)[0]
        # Same expression as nova/conf/paths.py, with its __file__.
        return os.path.abspath(os.path.join(
            os.path.dirname(os.path.join(pkg_dir, 'conf', 'paths.py')),
            '../../'))
    return os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def _state_path_def(*args: str) -> str:
    """Return an uninterpolated path relative to $state_path.

    Copy of nova.conf.paths.state_path_def, used by instances_path's default.
    """
    return os.path.join('$state_path', *args)


# ---------------------------------------------------------------------------
# Groups. oslo.config does not compare groups, only options, but title/help
# are kept identical to Nova's so generated sample configs match.
# ---------------------------------------------------------------------------

# From nova/conf/compute.py.
compute_group = cfg.OptGroup(
    'compute',
    title='Compute Manager Options',
    help="""
A collection of options specific to the nova-compute service.
""")

# From nova/conf/libvirt.py.
libvirt_group = cfg.OptGroup("libvirt",
                             title="Libvirt Options",
                             help="""
Libvirt options allows cloud administrator to configure related
libvirt hypervisor driver to be used within an OpenStack deployment.

Almost all of the libvirt config options are influence by ``virt_type`` config
which describes the virtualization type (or so called domain type) libvirt
should use for specific features such as live migration, snapshot.
""")

# From nova/conf/imagecache.py.
imagecache_group = cfg.OptGroup(
    'image_cache',
    title='Image Cache Options',
    help="""
A collection of options specific to image caching.
""")

# From nova/conf/workarounds.py.
workarounds_group = cfg.OptGroup(
    'workarounds',
    title='Workaround Options',
    help="""
A collection of workarounds used to mitigate bugs or issues found in system
tools (e.g. Libvirt or QEMU) or Nova itself under certain conditions. These
should only be enabled in exceptional circumstances. All options are linked
against bug IDs, where more information on the issue can be found.
""")

# From nova/conf/ephemeral_storage.py.
ephemeral_storage_encryption_group = cfg.OptGroup(
    name='ephemeral_storage_encryption',
    title='Ephemeral storage encryption options')

imagebackend_group = cfg.OptGroup(
    'imagebackend',
    title='Image Backend Options',
    help="""
Options of the imagebackend library that have no equivalent in Nova.
""")


# ---------------------------------------------------------------------------
# [DEFAULT]
# ---------------------------------------------------------------------------

# From nova/conf/paths.py. pybasedir is registered only because Nova's
# state_path defaults to '$pybasedir'; both must be copied for state_path
# (and through it instances_path) to be equal to Nova's.
PATHS_OPTS = [
    cfg.StrOpt('pybasedir',
        default=_nova_pybasedir(),
        sample_default='<Path>',
        help="""
The directory where the Nova python modules are installed.

This directory is used to store template files for networking and remote
console access. It is also the default path for other config options which
need to persist Nova internal data. It is very unlikely that you need to
change this option from its default value.

Possible values:

* The full path to a directory.

Related options:

* ``state_path``
"""),

    cfg.StrOpt('state_path',
        default='$pybasedir',
        help="""
The top-level directory for maintaining Nova's state.

This directory is used to store Nova's internal state. It is used by a
variety of other config options which derive from this. In some scenarios
(for example migrations) it makes sense to use a storage location which is
shared between multiple compute hosts (for example via NFS). Unless the
option ``instances_path`` gets overwritten, this directory can grow very
large.

Possible values:

* The full path to a directory. Defaults to value provided in ``pybasedir``.
"""),
]

# From nova/conf/compute.py (Nova's compute_opts and compute_manager_opts,
# both registered in [DEFAULT]).
COMPUTE_DEFAULT_OPTS = [
    cfg.StrOpt('instances_path',
        default=_state_path_def('instances'),
        sample_default="$state_path/instances",
        help="""
Specifies where instances are stored on the hypervisor's disk.
It can point to locally attached storage or a directory on NFS.

Possible values:

* $state_path/instances where state_path is a config option that specifies
  the top-level directory for maintaining nova's state. (default) or
  Any string representing directory path.

Related options:

* ``[workarounds]/ensure_libvirt_rbd_instance_dir_cleanup``
"""),
    cfg.StrOpt('default_ephemeral_format',
        help="""
The default format an ephemeral_volume will be formatted with on creation.

Possible values:

* ``ext2``
* ``ext3``
* ``ext4``
* ``xfs``
* ``ntfs`` (only for Windows guests)
"""),
    cfg.StrOpt('preallocate_images',
        default='none',
        choices=[
            ('none', 'No storage provisioning is done up front'),
            ('space', 'Storage is fully allocated at instance start')
        ],
        help="""
The image preallocation mode to use.

Image preallocation allows storage for instance images to be allocated up front
when the instance is initially provisioned. This ensures immediate feedback is
given if enough space isn't available. In addition, it should significantly
improve performance on writes to new blocks and may even improve I/O
performance to prewritten blocks due to reduced fragmentation.
"""),
    cfg.BoolOpt('use_cow_images',
        default=True,
        help="""
Enable use of copy-on-write (cow) images.

QEMU/KVM allow the use of qcow2 as backing files. By disabling this,
backing files will not be used.
"""),
    cfg.BoolOpt('force_raw_images',
        default=True,
        help="""
Force conversion of backing images to raw format.

Possible values:

* True: Backing image files will be converted to raw image format
* False: Backing image files will not be converted

Related options:

* ``compute_driver``: Only the libvirt driver uses this option.
* ``[libvirt]/images_type``: If images_type is rbd, setting this option
  to False is not allowed. See the bug
  https://bugs.launchpad.net/nova/+bug/1816686 for more details.
"""),
# NOTE(yamahata): ListOpt won't work because the command may include a comma.
# For example:
#
#     mkfs.ext4 -O dir_index,extent -E stride=8,stripe-width=16
#       --label %(fs_label)s %(target)s
#
# list arguments are comma separated and there is no way to escape such
# commas.
    cfg.MultiStrOpt('virt_mkfs',
        default=[],
        help="""
Name of the mkfs commands for ephemeral device.

The format is <os_type>=<mkfs command>
"""),
]

DEFAULT_OPTS = PATHS_OPTS + COMPUTE_DEFAULT_OPTS


# ---------------------------------------------------------------------------
# [compute]  (from nova/conf/compute.py, compute_group_opts)
# ---------------------------------------------------------------------------

COMPUTE_OPTS = [
    cfg.IntOpt('max_concurrent_disk_ops',
        default=0,
        min=0,
        help="""
Number of concurrent disk-IO-intensive operations (glance image downloads,
image format conversions, etc.) that we will do in parallel.  If this is set
too high then response time suffers.
The default value of 0 means no limit.
 """),
    cfg.ListOpt('vmdk_allowed_types',
                default=['streamOptimized', 'monolithicSparse'],
                help="""
A list of strings describing allowed VMDK "create-type" subformats
that will be allowed. This is recommended to only include
single-file-with-sparse-header variants to avoid potential host file
exposure due to processing named extents. If this list is empty, then no
form of VMDK image will be allowed.
"""),
]


# ---------------------------------------------------------------------------
# [image_cache]  (from nova/conf/imagecache.py, imagecache_opts)
# ---------------------------------------------------------------------------

IMAGE_CACHE_OPTS = [
    cfg.IntOpt('manager_interval',
        default=2400,
        min=-1,
        deprecated_name='image_cache_manager_interval',
        deprecated_group='DEFAULT',
        help="""
Number of seconds to wait between runs of the image cache manager.

Note that when using shared storage for the ``[DEFAULT]/instances_path``
configuration option across multiple nova-compute services, this periodic
could process a large number of instances. Similarly, using a compute driver
that manages a cluster (like vmwareapi.VMwareVCDriver) could result in
processing a large number of instances. Therefore you may need to adjust the
time interval for the anticipated load, or only run on one nova-compute
service within a shared storage aggregate.
Additional note, every time the image_cache_manager runs the timestamps
of images in ``[DEFAULT]/instances_path`` are updated.

Possible values:

* 0: run at the default interval of 60 seconds (not recommended)
* -1: disable
* Any other value

Related options:

* ``[DEFAULT]/compute_driver``
* ``[DEFAULT]/instances_path``
"""),
    cfg.StrOpt('subdirectory_name',
        default='_base',
        deprecated_name='image_cache_subdirectory_name',
        deprecated_group='DEFAULT',
        help="""
Location of cached images.

This is NOT the full path - just a folder name relative to '$instances_path'.
For per-compute-host cached images, set to '_base_$my_ip'
"""),
    cfg.BoolOpt('remove_unused_base_images',
        default=True,
        deprecated_group='DEFAULT',
        help="""
Should unused base images be removed?

When there are no remaining instances on the hypervisor created from
this base image or linked to it, the base image is considered unused.
"""),
    cfg.IntOpt('remove_unused_original_minimum_age_seconds',
        default=(24 * 3600),
        deprecated_group='DEFAULT',
        help="""
Unused unresized base images younger than this will not be removed.
"""),
    cfg.IntOpt('remove_unused_resized_minimum_age_seconds',
        default=3600,
        deprecated_group='libvirt',
        help="""
Unused resized base images younger than this will not be removed.
"""),
]


# ---------------------------------------------------------------------------
# [libvirt]  (from nova/conf/libvirt.py)
# ---------------------------------------------------------------------------

LIBVIRT_OPTS = [
    # libvirt_general_opts
    cfg.StrOpt('virt_type',
               default='kvm',
               choices=('kvm', 'lxc', 'qemu', 'parallels'),
               help="""
Describes the virtualization type (or so called domain type) libvirt should
use.

The choice of this type must match the underlying virtualization strategy
you have chosen for this host.

Related options:

* ``connection_uri``: depends on this
* ``disk_prefix``: depends on this
* ``cpu_mode``: depends on this
* ``cpu_models``: depends on this
* ``tb_cache_size``: depends on this
"""),
    # libvirt_imagebackend_opts
    cfg.StrOpt('images_type',
               default='default',
               choices=backend_types.KNOWN_TYPES,
               help="""
VM Images format.

If default is specified, then use_cow_images flag is used instead of this
one.

Related options:

* compute.use_cow_images
* images_volume_group
* [workarounds]/ensure_libvirt_rbd_instance_dir_cleanup
* compute.force_raw_images
"""),
    cfg.StrOpt('images_volume_group',
               help="""
LVM Volume Group that is used for VM images, when you specify images_type=lvm

Related options:

* images_type
"""),
    cfg.BoolOpt('sparse_logical_volumes',
                default=False,
                deprecated_for_removal=True,
                deprecated_since='18.0.0',
                deprecated_reason="""
Sparse logical volumes is a feature that is not tested hence not supported.
LVM logical volumes are preallocated by default. If you want thin provisioning,
use Cinder thin-provisioned volumes.
""",
                help="""
Create sparse logical volumes (with virtualsize) if this flag is set to True.
"""),
    cfg.StrOpt('images_rbd_pool',
               default='rbd',
               help='The RADOS pool in which rbd volumes are stored'),
    cfg.StrOpt('images_rbd_ceph_conf',
               default='',  # default determined by librados
               help='Path to the ceph configuration file to use'),
    # From nova/conf/libvirt.py, verbatim: the Glance multistore copy that
    # Rbd.clone asks for when an image is not in this cluster.
    cfg.StrOpt('images_rbd_glance_store_name',
               default='',
               help="""
The name of the Glance store that represents the rbd cluster in use by
this node. If set, this will allow Nova to request that Glance copy an
image from an existing non-local store into the one named by this option
before booting so that proper Copy-on-Write behavior is maintained.

Related options:

* images_type - must be set to ``rbd``
* images_rbd_glance_copy_poll_interval - controls the status poll frequency
* images_rbd_glance_copy_timeout - controls the overall copy timeout
"""),
    cfg.IntOpt('images_rbd_glance_copy_poll_interval',
               default=15,
               help="""
The interval in seconds with which to poll Glance after asking for it
to copy an image to the local rbd store. This affects how often we ask
Glance to report on copy completion, and thus should be short enough that
we notice quickly, but not too aggressive that we generate undue load on
the Glance server.

Related options:

* images_type - must be set to ``rbd``
* images_rbd_glance_store_name - must be set to a store name
"""),
    cfg.IntOpt('images_rbd_glance_copy_timeout',
               default=600,
               help="""
The overall maximum time we will wait for Glance to complete an image
copy to our local rbd store. This should be long enough to allow large
images to be copied over the network link between our local store and the
one where images typically reside. The downside of setting this too long
is just to catch the case where the image copy is stalled or proceeding too
slowly to be useful. Actual errors will be reported by Glance and noticed
according to the poll interval.

Related options:

* images_type - must be set to ``rbd``
* images_rbd_glance_store_name - must be set to a store name
* images_rbd_glance_copy_poll_interval - controls the failure time-to-notice
"""),
    cfg.StrOpt('hw_disk_discard',
               choices=('ignore', 'unmap'),
               help="""
Discard option for nova managed disks.

Requires:

* Libvirt >= 1.0.6
* Qemu >= 1.5 (raw format)
* Qemu >= 1.6 (qcow2 format)
"""),
    # libvirt_lvm_opts
    cfg.StrOpt('volume_clear',
        default='zero',
        choices=[
            ('zero', 'Overwrite volumes with zeroes'),
            ('shred', 'Overwrite volumes repeatedly'),
            ('none', 'Do not wipe deleted volumes'),
        ],
        help="""
Method used to wipe ephemeral disks when they are deleted. Only takes effect
if LVM is set as backing storage.

Related options:

* images_type - must be set to ``lvm``
* volume_clear_size
"""),
    cfg.IntOpt('volume_clear_size',
               default=0,
               min=0,
               help="""
Size of area in MiB, counting from the beginning of the allocated volume,
that will be cleared using method set in ``volume_clear`` option.

Possible values:

* 0 - clear whole volume
* >0 - clear specified amount of MiB

Related options:

* images_type - must be set to ``lvm``
* volume_clear - must be set and the value must be different than ``none``
  for this option to have any impact
"""),
    # libvirt_utils_opts
    cfg.BoolOpt('snapshot_compression',
                default=False,
                help="""
Enable snapshot compression for ``qcow2`` images.

Note: you can set ``snapshot_image_format`` to ``qcow2`` to force all
snapshots to be in ``qcow2`` format, independently from their original image
type.

Related options:

* snapshot_image_format
"""),
    # libvirt_volume_net_opts
    cfg.StrOpt('rbd_user',
               help="""
The RADOS client name for accessing rbd(RADOS Block Devices) volumes.

Libvirt will refer to this user when connecting and authenticating with
the Ceph RBD server.
"""),
    cfg.StrOpt('rbd_secret_uuid',
               help="""
The libvirt UUID of the secret for the rbd_user volumes.
"""),
    cfg.IntOpt('rbd_connect_timeout',
               default=5,
               help="""
The RADOS client timeout in seconds when initially connecting to the cluster.
"""),
]


# ---------------------------------------------------------------------------
# [workarounds]  (from nova/conf/workarounds.py)
# ---------------------------------------------------------------------------

WORKAROUNDS_OPTS = [
    cfg.BoolOpt(
        'disable_deep_image_inspection',
        default=False,
        help="""
This disables the additional deep image inspection that the compute node does
when downloading from glance. This includes backing-file, data-file, and
known-features detection *before* passing the image to qemu-img. Generally,
this inspection should be enabled for maximum safety, but this workaround
option allows disabling it if there is a compatibility concern.
"""),
]


# ---------------------------------------------------------------------------
# [ephemeral_storage_encryption]  (from nova/conf/ephemeral_storage.py)
# ---------------------------------------------------------------------------

EPHEMERAL_STORAGE_ENCRYPTION_OPTS = [
    cfg.BoolOpt('enabled',
        default=False,
        help="""
Enables/disables LVM ephemeral storage encryption.
"""),
    cfg.StrOpt('cipher',
        default='aes-xts-plain64',
        help="""
Cipher-mode string to be used.

The cipher and mode to be used to encrypt ephemeral storage. The set of
cipher-mode combinations available depends on kernel support. According
to the dm-crypt documentation, the cipher is expected to be in the format:
"<cipher>-<chainmode>-<ivmode>".

Possible values:

* Any crypto option listed in ``/proc/crypto``.
"""),
    cfg.IntOpt('key_size',
        default=512,
        min=1,
        help="""
Encryption key length in bits.

The bit length of the encryption key to be used to encrypt ephemeral storage.
In XTS mode only half of the bits are used for encryption key.
"""),
    cfg.StrOpt(
        'default_format',
        default='luks',
        choices=('luks',),
        help="""
Default ephemeral encryption format.

Only 'luks' is supported at this time.

Note that this does not apply to LVM ephemeral storage encryption.
"""),
]


# ---------------------------------------------------------------------------
# [imagebackend]: imagebackend's own options. Not in Nova, so free to define.
# ---------------------------------------------------------------------------

IMAGEBACKEND_OPTS = [
    # Help lines stay under 68 columns so the sample config, which
    # oslo-config-generator wraps at 70 with a '# ' prefix, reads cleanly.
    cfg.StrOpt('images_dir',
               default='$instances_path/../images',
               help="""
Directory of the embedded directory image source.

Used when imagebackend runs without Glance: each image is a file
named ``<image id>.<disk_format>`` in this directory, for example
``cirros.qcow2`` for image ``cirros`` in qcow2 format.

Related options:

* ``[DEFAULT]/instances_path``: the default is a sibling of it.
"""),
    cfg.IntOpt('qemu_img_address_space_limit',
               default=2,
               min=1,
               help="""
Address space limit, in GiB, of ``qemu-img info`` when it inspects
an untrusted image file.

A crafted image can make qemu-img allocate huge amounts of memory;
the limit makes such a run fail instead of exhausting the host.
"""),
    cfg.IntOpt('qemu_img_cpu_time_limit',
               default=30,
               min=1,
               help="""
CPU time limit, in seconds, of ``qemu-img info`` when it inspects
an untrusted image file.

A crafted image can make qemu-img spin; the limit makes such a run
fail instead of occupying a CPU indefinitely.
"""),
    cfg.IntOpt('max_image_virtual_size_gb',
               default=16384,
               min=0,
               help="""
Largest virtual size, in GiB, of an image the cache accepts
(0: no limit).

The size is checked before the image's data is fetched: declared
by the image source, or read from the image's header as the first
bytes arrive; a larger image is refused (``ImageTooLarge``) and its
download stopped. A small crafted image can declare petabytes,
which conversion, hashing and the disks made from it would then
have to handle. The default, 16 TiB, is ext4's largest file.

Related options:

* ``force_raw_images``: a converted image takes its virtual size
  (sparse) in the cache.
"""),
    cfg.BoolOpt('qcow2_overlay_writer',
                default=True,
                help="""
Write the Qcow2 backend's overlays in-process.

When true, a new qcow2 disk on a cached base is written by the
library itself: the same bytes ``qemu-img create -f qcow2 -F <fmt>
-b <base>`` writes (qemu 7.2, 64 KiB clusters), without a process.
Requests it does not cover (preallocation, other base formats)
still run qemu-img. Set to false to run qemu-img for every overlay;
the disk's record says which made it (provenance ``overlay``).
"""),
    cfg.StrOpt('thin_pool',
               default=None,
               help="""
Name of an LVM thin pool in ``[libvirt]/images_volume_group``.

When set, the LVM backend keeps cached base images as thin logical
volumes in this pool and creates instance disks as thin snapshots
of them, instead of copying each image into a fully allocated
logical volume. When unset, plain (thick) logical volumes are used.

Related options:

* ``[libvirt]/images_type`` - must be ``lvm`` for this to matter
* ``[libvirt]/images_volume_group``
"""),
]


# (group, options); None is [DEFAULT]. Groups are registered before their
# options, with Nova's titles and help (shown by --help, for instance).
_GROUPS = (
    (None, DEFAULT_OPTS),
    (compute_group, COMPUTE_OPTS),
    (imagecache_group, IMAGE_CACHE_OPTS),
    (libvirt_group, LIBVIRT_OPTS),
    (workarounds_group, WORKAROUNDS_OPTS),
    (ephemeral_storage_encryption_group, EPHEMERAL_STORAGE_ENCRYPTION_OPTS),
    (imagebackend_group, IMAGEBACKEND_OPTS),
)


def register_opts(conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    """Register all options on ``conf`` (default: the global ``cfg.CONF``).

    Idempotent: oslo.config ignores a re-registration of an equal option,
    and Nova's own registration of the shared options is equal too. A group
    that already exists (e.g. registered by Nova) is left as it is.

    :returns: the ConfigOpts the options were registered on.
    """
    if conf is None:
        conf = CONF
    for group, opts in _GROUPS:
        if group is None:
            conf.register_opts(opts)
        else:
            # A fresh OptGroup per ConfigOpts: register_group() keeps only a
            # shallow copy, which shares the group's option table (and with
            # it set_override()/set_default() state) with every other
            # ConfigOpts the same OptGroup object was registered on.
            conf.register_group(cfg.OptGroup(group.name, title=group.title,
                                             help=group.help))
            conf.register_opts(opts, group=group.name)
    return conf


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Options by group name, for oslo-config-generator.

    'DEFAULT' stands for the default group.
    """
    return [('DEFAULT' if group is None else group.name, list(opts))
            for group, opts in _GROUPS]
