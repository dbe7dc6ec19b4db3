"""The recorder: applies evaluation results to Kubernetes (status, annotations, Events)."""
