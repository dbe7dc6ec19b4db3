"""``kubectl certcheck``: every certificate certcheck watches, for people, through the user's kubeconfig.

``inventory.py`` (pure) turns CertCheck and ClusterCertCheck statuses and Secret annotations into rows,
most urgent first; ``check.py`` evaluates a local file with the same rules; ``__main__.py`` reads the
cluster and prints. It reads statuses, Secrets' metadata (never their data) and Events: nothing else.
"""
