"""The exec proxy (SPEC §5): its own process carrying terminals into workspaces.

Imports nothing from ``service`` and not the Pulumi SDK; the service imports
:mod:`proxy.tickets` (to mint) and :mod:`proxy.protocol` (its client side).
"""
