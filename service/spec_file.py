"""The CLI's spec files (create) and patch files (update): read as JSON or
YAML and checked against the same models the service validates with
(components.spec), so a mistake is named by field before anything is sent."""

from __future__ import annotations

from typing import IO, Any

import click


def read(file: IO[str], patch: bool = False) -> Any:
    """The file's document, refused with each bad field named (nothing sent)."""
    import yaml

    from components.spec import SpecError, WorkspaceSpec

    try:
        data = yaml.safe_load(file)
    except yaml.YAMLError as e:
        raise click.ClickException(f"{file.name}: not JSON or YAML: {e}") from None
    try:
        # Whether the repository may still change is the service's to say.
        WorkspaceSpec.check_patch(data) if patch else WorkspaceSpec.parse(data)
    except SpecError as e:
        lines = [f"{file.name}: not a valid {'patch' if patch else 'workspace spec'} "
                 "(nothing was sent)", *(f"  {k}: {v}" for k, v in e.errors.items())]
        raise click.ClickException("\n".join(lines)) from None
    return data
