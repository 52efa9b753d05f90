"""Rbd.get_model against a real Ceph cluster: the servers are the
cluster's monitors as its monmap says (what libguestfs is given), the
name, pool and user are the disk's.
"""

import imagebackend
from imagebackend import models


class _NoSecrets:
    """A libvirt connection that must not be asked: no secret is set."""

    def secretLookupByUUIDString(self, uuid):
        raise AssertionError('no rbd_secret_uuid: no secret to look up')


def test_rbd_model_names_the_clusters_monitors(host, ceph_cluster, instance):
    host.set_override('images_rbd_pool', ceph_cluster.pool, group='libvirt')
    host.set_override('images_rbd_ceph_conf', ceph_cluster.conf,
                      group='libvirt')
    disk = imagebackend.Backend(conf=host).by_name(instance, 'disk', 'rbd')
    model = disk.get_model(_NoSecrets())
    _v2, v1 = ceph_cluster.mon_ports
    assert model == models.RBDImage(f'{instance.uuid}_disk',
                                    ceph_cluster.pool, None, None,
                                    [f'127.0.0.1:{v1}'])
