"""Workspace stacks: the Pulumi program and the helpers that manage its stacks."""
