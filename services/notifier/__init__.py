"""The notifier: Slack and webhook alerts (issue 5; not built yet)."""
