"""The evaluator: keeps the CertCheck-to-Secret index, computes expiry, publishes results, schedules."""
