"""``certcheck all``: every service in one process, for small clusters and ``make up``."""
