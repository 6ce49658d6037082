"""Pulumi components that make up a workspace, one module per backend."""
