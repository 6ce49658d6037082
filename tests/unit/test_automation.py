"""Pure helpers of stacks/automation.py: reading the engine's refusals and types."""

from __future__ import annotations


def test_engine_protect_refusal_names_the_storage():
    from stacks.guard import protected_storage

    text = ('error: unable to replace resource "urn:pulumi:ws::stackspace::stackspace:docker:'
            'Workspace$docker:index/volume:Volume::storage"\nas it is currently marked for '
            'protection. To unprotect the resource, ...')
    assert protected_storage(text) == [
        "urn:pulumi:ws::stackspace::stackspace:docker:Workspace$docker:index/volume:Volume"
        "::storage"]
    assert protected_storage("error: image not found") == []
    other = 'error: "urn:pulumi:ws::p::docker:index/container:Container::x" marked for protection'
    assert protected_storage(other) == []

