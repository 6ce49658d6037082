"""The init step both backends run once on fresh storage.

The script is a constant: every user value reaches it through the environment
(`init_env`), never by interpolation, so nothing in a spec can become shell
code. The repository credential is handed to git through GIT_ASKPASS, so it
never appears in a command line, in git's output or in the logs.
"""

from __future__ import annotations

import base64
import hashlib
import json

from components.spec import WORKSPACE_ROOT, WorkspaceSpec

MARKER = ".stackspace/initialized"

INIT_SCRIPT = r"""set -eu
root="${STACKSPACE_ROOT:?}"
marker="$root/.stackspace/initialized"
umask 022
mkdir -p "$root/.stackspace"
if [ ! -e "$marker" ] && [ -n "${STACKSPACE_REPO_URL:-}" ]; then
  askpass=$(mktemp)
  printf '#!/bin/sh\nprintf "%%s" "$STACKSPACE_REPO_CREDENTIAL"\n' > "$askpass"
  chmod 700 "$askpass"
  export GIT_ASKPASS="$askpass" GIT_TERMINAL_PROMPT=0
  tmp="$root/.stackspace/clone.tmp"
  rm -rf "$tmp"
  echo "stackspace-init: cloning repository (ref ${STACKSPACE_REPO_REF})"
  if ! git clone --quiet --no-checkout -- "$STACKSPACE_REPO_URL" "$tmp" 2>/dev/null; then
    rm -f "$askpass"
    echo "stackspace-init: clone failed (check repository url and credential)" >&2
    exit 12
  fi
  rm -f "$askpass"
  if ! git -C "$tmp" checkout --quiet "$STACKSPACE_REPO_REF" -- 2>/dev/null &&
     ! git -C "$tmp" checkout --quiet "origin/$STACKSPACE_REPO_REF" -- 2>/dev/null; then
    echo "stackspace-init: ref not found: ${STACKSPACE_REPO_REF}" >&2
    exit 13
  fi
  # Move the checkout into the root without touching anything already there.
  for entry in "$tmp"/* "$tmp"/.[!.]* "$tmp"/..?*; do
    [ -e "$entry" ] || continue
    name=${entry##*/}
    [ -e "$root/$name" ] || mv "$entry" "$root/$name"
  done
  rm -rf "$tmp"
fi
i=0
while [ "$i" -lt "${STACKSPACE_FILE_COUNT:-0}" ]; do
  eval "path=\${STACKSPACE_FILE_${i}_PATH} mode=\${STACKSPACE_FILE_${i}_MODE}"
  eval "data=\${STACKSPACE_FILE_${i}_DATA}"
  case "$path" in /*|..|../*|*/..|*/../*) echo "stackspace-init: bad path" >&2; exit 14;; esac
  mkdir -p "$root/$(dirname "$path")"
  printf '%s' "$data" | base64 -d > "$root/$path.stackspace-tmp"
  chmod "$mode" "$root/$path.stackspace-tmp"
  mv "$root/$path.stackspace-tmp" "$root/$path"
  i=$((i + 1))
done
[ -e "$marker" ] || date -u +%Y-%m-%dT%H:%M:%SZ > "$marker"
echo "stackspace-init: done"
"""


def init_env(spec: WorkspaceSpec) -> tuple[dict[str, str], dict[str, str]]:
    """Environment for the init step as (plain, secret) name->value maps.

    Secret values (the credential and secret files) are kept apart so each
    backend can deliver them as secrets (Kubernetes Secret, Pulumi secret env).
    """
    plain: dict[str, str] = {"STACKSPACE_ROOT": WORKSPACE_ROOT}
    secret: dict[str, str] = {}
    if spec.repository is not None:
        plain["STACKSPACE_REPO_URL"] = spec.repository.url
        plain["STACKSPACE_REPO_REF"] = spec.repository.ref
        if spec.repository.credential is not None:
            secret["STACKSPACE_REPO_CREDENTIAL"] = spec.repository.credential
    plain["STACKSPACE_FILE_COUNT"] = str(len(spec.files))
    for i, f in enumerate(spec.files):
        plain[f"STACKSPACE_FILE_{i}_PATH"] = f.path
        plain[f"STACKSPACE_FILE_{i}_MODE"] = f.mode
        data = base64.b64encode(f.content.encode()).decode()
        (secret if f.secret else plain)[f"STACKSPACE_FILE_{i}_DATA"] = data
    return plain, secret


def init_fingerprint(spec: WorkspaceSpec) -> str:
    """Short hash of everything the init step does, for naming its run.

    A new fingerprint means a new init run (the Job/container is replaced);
    an unchanged one means start/stop never re-run init.
    """
    plain, secret = init_env(spec)
    blob = json.dumps([spec.image, plain, secret], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]
