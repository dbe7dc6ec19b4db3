"""Plumbing shared by every service: settings, logging, bus, Kubernetes client, health, runtime."""
