"""The exporter: per-certificate and per-CertCheck Prometheus series, exposed once, complete.

It follows the whole objects stream into the same view the evaluator keeps and computes the series at
scrape time, so time-dependent values (expired, expiring) are always current. Run one replica: it is the
single scrape target for these series (the other services expose only their own pipeline metrics).
"""
