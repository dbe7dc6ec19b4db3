"""A local certcheck environment: a real kube-apiserver + etcd and a real nats-server on loopback.

Used by ``make up`` and by the test suite. Never used in production.
"""
