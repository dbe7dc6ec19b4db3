"""Settings from the environment (CERTCHECK_*), overridable by command-line flags."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field, fields


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CERTCHECK_{name.upper()}", default)


@dataclass(frozen=True)
class Settings:
    # One URL, or the nodes of a cluster comma-separated: any that answers will do.
    nats_url: str = field(default_factory=lambda: _env("nats_url", "nats://127.0.0.1:4222"))
    # The service's NATS user (k8s/nats/auth.conf); the password comes from the environment only.
    nats_user: str = field(default_factory=lambda: _env("nats_user", ""))
    nats_password: str = field(default_factory=lambda: _env("nats_password", ""), repr=False)
    # TLS to NATS: the CA bundle that signed the server's certificate (verification is never off), and
    # a client certificate and key where the server asks for one.
    nats_ca: str = field(default_factory=lambda: _env("nats_ca", ""))
    nats_cert: str = field(default_factory=lambda: _env("nats_cert", ""))
    nats_key: str = field(default_factory=lambda: _env("nats_key", ""))
    stream_replicas: int = field(default_factory=lambda: int(_env("stream_replicas", "1")))
    # Partitions the namespaces are spread over, for evaluator and exporter replicas to divide: read
    # when the objects stream is created, fixed from then on (the stream's own count rules after).
    partitions: int = field(default_factory=lambda: int(_env("partitions", "16")))
    # The cluster's name in the public events (a DNS label): one NATS system may carry many clusters'.
    cluster_name: str = field(default_factory=lambda: _env("cluster_name", "default"))
    events_max_age_days: float = field(default_factory=lambda: float(_env("events_max_age_days", "90")))
    events_max_bytes: int = field(default_factory=lambda: int(_env("events_max_bytes", str(8 * 1024**3))))
    kubeconfig: str = field(default_factory=lambda: _env("kubeconfig", os.environ.get("KUBECONFIG", "")))
    http_host: str = field(default_factory=lambda: _env("http_host", "0.0.0.0"))
    http_port: int = field(default_factory=lambda: int(_env("http_port", "8080")))
    log_level: str = field(default_factory=lambda: _env("log_level", "INFO"))
    # watcher: replicas elect one active watcher; the others stand by
    instance_id: str = field(default_factory=lambda: _env("instance_id", socket.gethostname()))
    lease_seconds: float = field(default_factory=lambda: float(_env("lease_seconds", "15")))
    secret_types: str = field(default_factory=lambda: _env("secret_types", "kubernetes.io/tls"))
    secret_label_selector: str = field(default_factory=lambda: _env("secret_label_selector", ""))
    watch_configmaps: str = field(default_factory=lambda: _env("watch_configmaps", "true"))
    configmap_label_selector: str = field(default_factory=lambda: _env("configmap_label_selector", ""))
    # cert-manager Certificates (their renewalTime): true, false, or auto (if the API server serves them).
    watch_certificates: str = field(default_factory=lambda: _env("watch_certificates", "auto"))
    # Webhook configurations, APIServices and CRDs, for ClusterCertChecks' spec.sources.
    watch_cluster_sources: str = field(default_factory=lambda: _env("watch_cluster_sources", "true"))
    list_page_size: int = field(default_factory=lambda: int(_env("list_page_size", "500")))
    # evaluator
    # How many certificates a CertCheck's status lists, most urgent first (services/evaluator/status.py).
    status_cap: int = field(default_factory=lambda: int(_env("status_cap", "10")))
    # How old a status may get before an unchanged one is written again (its lastEvaluationTime); 0:
    # the resync interval.
    status_refresh_seconds: float = field(default_factory=lambda: float(_env("status_refresh_seconds", "0")))
    resync_interval_seconds: float = field(
        default_factory=lambda: float(_env("resync_interval_seconds", str(10 * 3600)))
    )
    # How long after a result that changes a status, or a status changed into something not told, the
    # status is looked at: not what was told once the recorder applied it, it is written again.
    status_check_seconds: float = field(default_factory=lambda: float(_env("status_check_seconds", "10")))
    # recorder
    write_concurrency: int = field(default_factory=lambda: int(_env("write_concurrency", "16")))
    # Normal Events on Secrets (Renewed, Recovered) per namespace: a burst, then one per refill period
    # (a mass rotation is summarised on the CertCheck instead); 0: no limit. Warnings are never held.
    event_burst: int = field(default_factory=lambda: int(_env("event_burst", "25")))
    event_refill_seconds: float = field(default_factory=lambda: float(_env("event_refill_seconds", "5")))
    # notifier
    slack_api_url: str = field(default_factory=lambda: _env("slack_api_url", "https://slack.com/api"))
    pagerduty_api_url: str = field(
        default_factory=lambda: _env("pagerduty_api_url", "https://events.pagerduty.com")
    )
    notify_max_attempts: int = field(default_factory=lambda: int(_env("notify_max_attempts", "6")))
    # CIDRs webhooks may reach besides public addresses (loopback, private... are refused by default).
    webhook_allowed_cidrs: str = field(default_factory=lambda: _env("webhook_allowed_cidrs", ""))

    @property
    def configmaps_watched(self) -> bool:
        return self.watch_configmaps.strip().lower() in ("1", "true", "yes", "on")

    @property
    def cluster_sources_watched(self) -> bool:
        return self.watch_cluster_sources.strip().lower() in ("1", "true", "yes", "on")

    @classmethod
    def from_args(cls, argv: list[str] | None = None, prog: str | None = None) -> Settings:
        defaults = cls()
        parser = argparse.ArgumentParser(prog=prog, description="certcheck service settings")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(
                flag,
                type=type(getattr(defaults, f.name)),
                default=getattr(defaults, f.name),
                help=f"(env CERTCHECK_{f.name.upper()}"
                + (")" if f.name == "nats_password" else ", default %(default)s)"),
            )
        return cls(**vars(parser.parse_args(argv)))
