"""What `stackspace uninstall` reads back from the install's state: the claims it
kept, and what it tells the operator about them."""

from __future__ import annotations

from service.install import kept_claims, kept_note


def claim(ns: str, name: str, **extra) -> dict:
    return {"type": "kubernetes:core/v1:PersistentVolumeClaim",
            "outputs": {"metadata": {"namespace": ns, "name": name}}, **extra}


def test_kept_claims_are_the_live_claims_in_the_state():
    state = {"resources": [
        {"type": "pulumi:providers:kubernetes", "outputs": {}},
        {"type": "kubernetes:core/v1:Namespace",
         "outputs": {"metadata": {"name": "ss"}}},
        claim("ss", "stackspace-data"),
        claim("ss", "old-data", delete=True),  # pending deletion: not kept
    ]}
    assert kept_claims(state) == ["ss/stackspace-data"]
    assert kept_claims({}) == []
    assert kept_claims({"resources": []}) == []


def test_the_note_names_what_was_kept_and_how_to_remove_it():
    note = kept_note("ss", ["ss/stackspace-data"])
    assert "kept the data volume ss/stackspace-data" in note
    assert "stackspace uninstall --namespace ss --delete-data" in note
    assert kept_note("ss", []) == "uninstalled ss: nothing kept"
