"""`secret_env` on Docker without a secret in the container's config (SPEC §3).

A Docker container's `Env` is readable by anyone with API access (`docker
inspect`) for the container's whole life. So the values travel as a file
uploaded into the workspace container's own filesystem (never its config, never
the storage volume; a Pulumi secret in the state), and reach processes through
a POSIX sh wrapper that exports them before it execs the real command: the
workspace's main command (its entrypoint) and every `exec` or terminal the
proxy opens. Kubernetes needs none of this: a Secret reference keeps the
values out of the Pod spec and every exec inherits them.

No Pulumi imports: the exec proxy uses this too.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

SECRET_ENV_FILE = "/run/stackspace/secret-env"  # noqa: S105 - a path, not a secret
# Argv: the file, then the command. A missing file (a container made before
# secrets moved here) runs the command as it is.
_LOAD = 'if [ -r "$0" ]; then set -a; . "$0"; set +a; fi; exec "$@"'


def with_secret_env(command: Sequence[str]) -> list[str]:
    """`command`, run with the workspace's secret env exported."""
    return ["/bin/sh", "-c", _LOAD, SECRET_ENV_FILE, *command]


def render_secret_env(values: Mapping[str, str]) -> str:
    """The file's text: one `NAME='value'` line per variable, quoted for sh
    (names are validated identifiers; values are any text)."""
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in sorted(values.items()))
