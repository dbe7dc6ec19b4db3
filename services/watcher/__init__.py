"""The watcher: lists and watches CertChecks and Secrets and publishes what it observes."""
