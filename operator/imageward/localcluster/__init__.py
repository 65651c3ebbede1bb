"""A real local cluster for tests and `imageward dev`.

etcd, kube-apiserver & co. and kwok nodes (`controlplane`), OCI registries with their
auth variants (`registries`), containerd (`containerd`), test images (`images`).
"""
