"""certcheck services: watcher, evaluator, recorder, notifier, and their shared plumbing."""
