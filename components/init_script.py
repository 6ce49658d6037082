"""The init step both backends run to prepare a workspace's storage.

What the user wrote stays theirs (SPEC §3): the repository is cloned once (a
marker records it) and a spec file is written only when its own entry in
`files` changed since init last wrote it. Init records each entry's mode and
content digest (computed in the container, so no digest of a secret travels
in a container's config) under `.stackspace/files/`, so an image/env/command update, a restart or a
re-run of init writes nothing, and a user's edit to a spec file survives
until that file's entry itself changes.

The script is a constant: plain values (URL, paths, modes) reach it
through the environment; file contents and the repository credential reach it
as files named `<STACKSPACE_INPUT>f<i>` and `<STACKSPACE_INPUT>credential`
(Docker: uploaded into the init container's own filesystem, emptied and
removed by init;
Kubernetes: a mounted Secret). So no content travels in one env string (the
kernel caps those at 128 KiB) and no secret sits in a container's config.
The credential reaches git through GIT_ASKPASS, never a command line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from components.spec import WORKSPACE_ROOT, WorkspaceSpec

MARKER = ".stackspace/initialized"
RECORDS = ".stackspace/files"
CREDENTIAL = "credential"

INIT_SCRIPT = r"""set -eu
root="${STACKSPACE_ROOT:?}"
input="${STACKSPACE_INPUT:?}"
state="$root/.stackspace"
marker="$state/initialized"
# Empty, then try to remove, every input file: emptying works even where the
# directory does not let init remove a file it does not own.
scrub() { [ -f "$1" ] || return 0; (: > "$1") 2>/dev/null || true; rm -f "$1" 2>/dev/null || :; }
cleanup() {
  [ "${STACKSPACE_INPUT_REMOVE:-0}" = 1 ] || return 0
  scrub "${input}credential"
  n=0
  while [ "$n" -lt "${STACKSPACE_FILE_COUNT:-0}" ]; do scrub "${input}f$n"; n=$((n + 1)); done
}
trap cleanup EXIT
umask 022
mkdir -p "$state/files"
if [ ! -e "$marker" ] && [ -n "${STACKSPACE_REPO_URL:-}" ]; then
  if ! command -v git >/dev/null 2>&1; then
    echo "stackspace-init: clone failed: the image has no git (use an image with git)" >&2
    exit 12
  fi
  askpass=$(mktemp)
  # Username prompt: the configured username if any; every other prompt: the credential.
  printf '%s\n' '#!/bin/sh' \
    'case "$1" in Username*) if [ -n "${STACKSPACE_REPO_USERNAME:-}" ]; then' \
    '  printf "%s" "$STACKSPACE_REPO_USERNAME"; exit 0; fi;; esac' \
    'cat "${STACKSPACE_INPUT}credential" 2>/dev/null' > "$askpass"
  chmod 700 "$askpass"
  export GIT_ASKPASS="$askpass" GIT_TERMINAL_PROMPT=0 STACKSPACE_INPUT
  tmp="$state/clone.tmp"
  rm -rf "$tmp"
  echo "stackspace-init: cloning repository (ref ${STACKSPACE_REPO_REF:-the default branch})"
  if ! err=$(git clone --quiet --no-checkout -- "$STACKSPACE_REPO_URL" "$tmp" 2>&1); then
    rm -f "$askpass"
    # The cause, in our words: git's own text is not echoed (it quotes URLs).
    status=$(printf '%s\n' "$err" | sed -n 's/.*returned error: \([0-9][0-9]*\).*/\1/p' | head -n 1)
    case "$err" in
      *"Authentication failed"*|*"could not read Username"*|*"could not read Password"*)
        cause="authentication refused";;
      *"returned error: 401"*|*"returned error: 403"*)
        cause="authentication refused (HTTP $status)";;
      *"returned error: "*) cause="HTTP status $status";;
      *"not found"*|*"does not appear to be a git repository"*) cause="repository not found";;
      *"resolve host"*|*"onnect"*|*"timed out"*|*"unreachable"*|*"unable to access"*)
        cause="server unreachable";;
      *) cause="git exited with an error";;
    esac
    echo "stackspace-init: clone failed: $cause (check repository url, username and credential)" >&2
    exit 12
  fi
  rm -f "$askpass"
  # No ref given: the branch the repository's HEAD names.
  ref=${STACKSPACE_REPO_REF:-$(git -C "$tmp" symbolic-ref --short HEAD 2>/dev/null || echo HEAD)}
  if ! git -C "$tmp" checkout --quiet "$ref" -- 2>/dev/null &&
     ! git -C "$tmp" checkout --quiet "origin/$ref" -- 2>/dev/null; then
    echo "stackspace-init: ref not found: $ref" >&2
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
  eval "key=\${STACKSPACE_FILE_${i}_KEY}"
  src="${input}f$i"
  i=$((i + 1))
  case "$path" in
    /*|..|../*|*/..|*/../*) echo "stackspace-init: bad path: $path" >&2; exit 14;;
  esac
  if [ ! -r "$src" ]; then echo "stackspace-init: no content for file $path" >&2; exit 15; fi
  digest="$mode $(sha256sum < "$src")"
  record="$state/files/$key"
  # Written before with this very entry: leave the user's version alone.
  [ "$(cat "$record" 2>/dev/null || true)" = "$digest" ] && continue
  dst="$root/$path"
  if ! { mkdir -p "$(dirname "$dst")" && cp "$src" "$dst.stackspace-tmp" &&
         chmod "$mode" "$dst.stackspace-tmp" && mv -f "$dst.stackspace-tmp" "$dst" &&
         printf '%s\n' "$digest" > "$record"; }; then
    rm -f "$dst.stackspace-tmp"
    echo "stackspace-init: could not write file $path" >&2
    exit 15
  fi
  echo "stackspace-init: wrote $path"
done
# Forget entries no longer in the spec, so one re-added later is written again.
for record in "$state/files"/*; do
  [ -e "$record" ] || continue
  case " ${STACKSPACE_FILE_KEYS:-} " in *" ${record##*/} "*) ;; *) rm -f "$record";; esac
done
[ -e "$marker" ] || date -u +%Y-%m-%dT%H:%M:%SZ > "$marker"
echo "stackspace-init: done"
"""


def init_failure_message(code: int, logs: str | None) -> str:
    """What a user reads when init exited with `code`, on either backend: the
    last lines init printed (its own secret-free progress and cause lines)."""
    tail = " | ".join((logs or "").strip().splitlines()[-3:])
    return f"workspace init failed with exit code {code}" + (f": {tail}" if tail else "")


@dataclass(frozen=True)
class InitInputs:
    """What one init run is given.

    `env`: plain settings (no secret, no file content). `files`: input name
    (`f<i>`, `credential`) -> content, the part a backend delivers as files;
    `secret_names` says which of them are secret.
    """
    env: dict[str, str]
    files: dict[str, str]
    secret_names: frozenset[str]


def entry_digest(path: str, mode: str, content: str) -> str:
    """Digest of one `files` entry (for the init fingerprint)."""
    return hashlib.sha256(json.dumps([path, mode, content]).encode()).hexdigest()


def path_key(path: str) -> str:
    """Record name for a path (paths may hold '/', record names may not)."""
    return hashlib.sha256(path.encode()).hexdigest()[:32]


def init_inputs(spec: WorkspaceSpec, input_prefix: str, remove_inputs: bool) -> InitInputs:
    """The init run for `spec`, with its input files found at `input_prefix<name>`."""
    env: dict[str, str] = {"STACKSPACE_ROOT": WORKSPACE_ROOT, "STACKSPACE_INPUT": input_prefix}
    if remove_inputs:
        env["STACKSPACE_INPUT_REMOVE"] = "1"
    files: dict[str, str] = {}
    secret: set[str] = set()
    if spec.repository is not None:
        env["STACKSPACE_REPO_URL"] = spec.repository.url
        if spec.repository.ref is not None:  # unset: the repository's default branch
            env["STACKSPACE_REPO_REF"] = spec.repository.ref
        if spec.repository.username is not None:
            env["STACKSPACE_REPO_USERNAME"] = spec.repository.username
        if spec.repository.credential is not None:
            files[CREDENTIAL] = spec.repository.credential
            secret.add(CREDENTIAL)
    env["STACKSPACE_FILE_COUNT"] = str(len(spec.files))
    for i, f in enumerate(spec.files):
        env[f"STACKSPACE_FILE_{i}_PATH"] = f.path
        env[f"STACKSPACE_FILE_{i}_MODE"] = f.mode
        env[f"STACKSPACE_FILE_{i}_KEY"] = path_key(f.path)
        files[f"f{i}"] = f.content
        if f.secret:
            secret.add(f"f{i}")
    env["STACKSPACE_FILE_KEYS"] = " ".join(path_key(f.path) for f in spec.files)
    return InitInputs(env=env, files=files, secret_names=frozenset(secret))


def init_fingerprint(spec: WorkspaceSpec) -> str:
    """Short hash of what init does (repository + file entries), naming its run.

    Image, env, resources and command are not part of it: changing them never
    starts a new init. A changed `files` entry does, and that run writes only
    the entries whose digest differs from init's record.
    """
    repo = spec.repository
    shape = [
        [repo.url, repo.ref, repo.username] if repo else None,
        [[f.path, f.mode, entry_digest(f.path, f.mode, f.content)] for f in spec.files],
    ]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:8]
