"""The stackspace service: HTTP API, operation runner, store, exec proxy and CLI."""
