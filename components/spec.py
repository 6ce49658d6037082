"""The workspace spec model shared by the Pulumi program, the service and the CLI.

Everything a user sends passes through `WorkspaceSpec.parse`, which rejects
unknown fields and bad values with a `SpecError` naming the field. Values that
survive validation are safe to place in resource names, labels and container
environments; none of them ever reaches a shell as code (the init script reads
them from its environment).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

# The unprivileged user every workspace and init step runs as. The default
# image (images/workspace/recipe.sh) creates it with this uid/gid.
WORKSPACE_UID = 1000
WORKSPACE_GID = 1000
WORKSPACE_ROOT = "/workspace"
DEFAULT_IMAGE = "stackspace/workspace:bookworm"
# Keeps the container alive until stopped, without a shell loop to kill.
DEFAULT_COMMAND = ["sleep", "infinity"]

# The rules a stored spec was accepted under; bumped when validation tightens.
# Stored rows are read as they were stored (WorkspaceSpec.stored), never
# rejected by newer rules: a workspace accepted once can always be listed,
# shown, started, stopped and deleted.
SPEC_VERSION = 1

MAX_NAME = 40
MAX_FILES = 64
# The whole spec lives in stack config, and the Pulumi language host hands all
# config to the program in ONE environment string (PULUMI_CONFIG), which Linux
# caps at 128 KiB (MAX_ARG_STRLEN). So the spec's values, as they appear there
# (JSON inside JSON), share one budget, leaving room for the other keys; one
# file may take most of it.
MAX_CONFIG_BYTES = 120 * 1024
MAX_FILE_BYTES = 100 * 1024
MAX_ENV = 128
# Stands for a secret value in API responses and in a stored spec's public form.
REDACTED = "[secret]"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Docker reference grammar (distribution/reference), simplified: optional
# registry host[:port], lowercase path components, optional tag and digest.
_IMAGE = re.compile(
    r"^(?:(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
_GIT_REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/+-]{1,200}$")
_SSH_SCP = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._/~+-]+$")
_URL = re.compile(r"^(https|ssh|file)://[^\s'\"`$\\;|&<>]+$")
# Kubernetes quantities: plain or binary/decimal suffixed numbers.
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_MODE = re.compile(r"^0?[0-7]{3}$")
_USERNAME = re.compile(r"^[A-Za-z0-9._@+-]{1,255}$")

_SUFFIX = {
    None: 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


class SpecError(ValueError):
    """A spec was rejected. `errors` maps a dotted field path to a message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def quantity_value(text: str) -> float:
    """Numeric value of a Kubernetes quantity such as '2Gi' or '500m'."""
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    return float(m.group(1)) * _SUFFIX[m.group(3)]


def registry_host(image: str) -> str:
    """The registry an image reference pulls from ('docker.io' when none is named)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def validate_name(name: Any, field_name: str = "name") -> str:
    if not isinstance(name, str) or not name:
        raise SpecError({field_name: "required string"})
    if len(name) > MAX_NAME or not _DNS_LABEL.match(name):
        raise SpecError(
            {field_name: f"must be a DNS-1123 label (a-z, 0-9, '-'), at most {MAX_NAME} chars"}
        )
    return name


def validate_relative_path(path: Any, field_name: str) -> str:
    """A path under the workspace root: relative, normalised, no '..' escape."""
    if not isinstance(path, str) or not path:
        raise SpecError({field_name: "required string"})
    parts = path.split("/")
    if (
        path.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or len(path) > 255
        or any(ord(c) < 32 for c in path)
        or parts[0] == ".stackspace"
    ):
        raise SpecError(
            {field_name: "must be a relative path under the workspace root "
             "(no leading '/', no '.', '..' or empty parts, not under .stackspace/)"}
        )
    return path


def _check_keys(obj: Any, allowed: set[str], where: str, errors: dict[str, str]) -> dict:
    if not isinstance(obj, dict):
        errors[where or "body"] = "must be an object"
        return {}
    for key in obj:
        if key not in allowed:
            errors[f"{where}.{key}" if where else key] = "unknown field"
    return obj


@dataclass(frozen=True)
class Repository:
    url: str
    ref: str = "main"
    credential: str | None = None  # secret: token (https) or never echoed
    # Sent with the credential (GitLab OAuth: "oauth2", Bitbucket: "x-token-auth").
    # None keeps the old behaviour: the credential answers both prompts.
    username: str | None = None


@dataclass(frozen=True)
class ImageCredentials:
    """Registry login for pulling `image`. The password is secret: the public
    form of a stored spec (public_dict) holds REDACTED in its place."""
    username: str
    password: str


@dataclass(frozen=True)
class WorkspaceFile:
    path: str
    content: str
    mode: str = "0644"
    secret: bool = False


@dataclass(frozen=True)
class Resources:
    cpu: str = "1"
    memory: str = "1Gi"
    storage: str = "1Gi"


@dataclass(frozen=True)
class WorkspaceSpec:
    name: str
    image: str = DEFAULT_IMAGE
    runtime: str | None = None
    repository: Repository | None = None
    env: dict[str, str] = field(default_factory=dict)
    files: tuple[WorkspaceFile, ...] = ()
    resources: Resources = field(default_factory=Resources)
    command: tuple[str, ...] = tuple(DEFAULT_COMMAND)
    # Secret values: names are public, values are Pulumi secrets / Kubernetes
    # Secrets, never echoed.
    secret_env: dict[str, str] = field(default_factory=dict)
    image_credentials: ImageCredentials | None = None

    FIELDS = frozenset(
        {"name", "image", "runtime", "repository", "env", "files", "resources", "command",
         "secret_env", "image_credentials"}
    )

    @classmethod
    def parse(cls, data: Any) -> WorkspaceSpec:
        """Validate a create request (or stored spec) into a spec."""
        errors: dict[str, str] = {}
        data = _check_keys(data, set(cls.FIELDS), "", errors)
        if errors.get("body"):
            raise SpecError(errors)

        name = _collect(errors, lambda: validate_name(data.get("name")))
        image = data.get("image", DEFAULT_IMAGE)
        if not isinstance(image, str) or len(image) > 255 or not _IMAGE.match(image):
            errors["image"] = "must be an image reference like 'registry/name:tag'"
        runtime = data.get("runtime")
        if runtime is not None:
            _collect(errors, lambda: validate_name(runtime, "runtime"))

        repository = None
        if data.get("repository") is not None:
            repository = _parse_repository(data["repository"], errors)
        env = _parse_env(data.get("env", {}), errors)
        secret_env = _parse_env(data.get("secret_env", {}), errors, "secret_env")
        for k in set(env) & set(secret_env):
            errors[f"secret_env.{k}"] = "already set in env"
        image_credentials = None
        if data.get("image_credentials") is not None:
            image_credentials = _parse_image_credentials(data["image_credentials"], errors)
        files = _parse_files(data.get("files", []), errors)
        resources = _parse_resources(data.get("resources", {}), errors)

        command = data.get("command", DEFAULT_COMMAND)
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, str) and c and "\0" not in c for c in command)
            or len(command) > 64
        ):
            errors["command"] = "must be a non-empty list of strings"

        if errors:
            raise SpecError(errors)
        _check_config_budget(data, errors)
        if errors:
            raise SpecError(errors)
        return cls(
            name=name,
            image=image,
            runtime=runtime,
            repository=repository,
            env=env,
            files=files,
            resources=resources,
            command=tuple(command),
            secret_env=secret_env,
            image_credentials=image_credentials,
        )

    def to_dict(self, redact: bool = False) -> dict[str, Any]:
        """JSON form. With `redact`, secrets are replaced by a marker."""
        # Shallow copies, not dataclasses.asdict (its deep copy was most of a
        # listing's time): every value is a str, bool, None or a str dict.
        out = dict(vars(self))
        out["env"], out["secret_env"] = dict(self.env), dict(self.secret_env)
        out["resources"] = dict(vars(self.resources))
        for key in ("repository", "image_credentials"):
            if out[key] is not None:
                out[key] = dict(vars(out[key]))
        out["files"] = [dict(vars(f)) for f in self.files]
        out["command"] = list(self.command)
        if self.repository is None:
            out.pop("repository")
        elif redact and self.repository.credential is not None:
            out["repository"]["credential"] = REDACTED
        elif self.repository.credential is None:
            out["repository"].pop("credential")
        if self.repository is not None and self.repository.username is None:
            out["repository"].pop("username")
        if redact:
            for f in out["files"]:
                if f["secret"]:
                    f["content"] = REDACTED
            out["secret_env"] = {k: REDACTED for k in self.secret_env}
        if self.image_credentials is None:
            out.pop("image_credentials")
        elif redact:
            out["image_credentials"]["password"] = REDACTED
        if self.runtime is None:
            out.pop("runtime")
        return out

    def public_dict(self) -> dict[str, Any]:
        """The spec without any secret values (safe for plain stack config)."""
        out = self.to_dict()
        if "repository" in out:
            out["repository"].pop("credential", None)
        out["files"] = [
            {k: v for k, v in f.items() if not (f["secret"] and k == "content")}
            for f in out["files"]
        ]
        # Names stay visible (`pulumi config` shows what is set), values do not.
        out["secret_env"] = {k: "" for k in self.secret_env}
        if "image_credentials" in out:
            out["image_credentials"]["password"] = REDACTED
        return out

    def secret_values(self) -> dict[str, str]:
        """Secret values by key: 'credential', 'file:<path>' for secret files,
        'env:<NAME>' for secret_env and 'image_password'."""
        out: dict[str, str] = {}
        if self.repository and self.repository.credential is not None:
            out["credential"] = self.repository.credential
        for f in self.files:
            if f.secret:
                out[f"file:{f.path}"] = f.content
        for k, v in self.secret_env.items():
            out[f"env:{k}"] = v
        if self.image_credentials and self.image_credentials.password != REDACTED:
            out["image_password"] = self.image_credentials.password
        return out

    @classmethod
    def from_public(cls, public: dict[str, Any], secrets: dict[str, str]) -> WorkspaceSpec:
        """Inverse of public_dict + secret_values (used by the stack program)."""
        data = dict(public)
        if "repository" in data and "credential" in secrets:
            data["repository"] = {**data["repository"], "credential": secrets["credential"]}
        data["files"] = [
            {**f, "content": secrets.get(f"file:{f['path']}", "")} if f.get("secret") else f
            for f in data.get("files", [])
        ]
        data["secret_env"] = {k: secrets.get(f"env:{k}", "")
                              for k in data.get("secret_env", {})}
        if "image_credentials" in data and "image_password" in secrets:
            data["image_credentials"] = {**data["image_credentials"],
                                         "password": secrets["image_password"]}
        return cls.stored(data)

    @classmethod
    def stored(cls, data: dict[str, Any]) -> WorkspaceSpec:
        """A spec as the service stored it: validated when it was accepted,
        under the rules of its SPEC_VERSION, and never judged again by today's
        (so a limit that tightens cannot strand a workspace). Only what a user
        sends goes through `parse`; a PATCH validates the merged result."""
        repository = data.get("repository")
        credentials = data.get("image_credentials")
        return cls(
            name=data["name"],
            image=data.get("image", DEFAULT_IMAGE),
            runtime=data.get("runtime"),
            repository=Repository(**repository) if repository else None,
            env=dict(data.get("env", {})),
            files=tuple(WorkspaceFile(**{"content": "", **f}) for f in data.get("files", [])),
            resources=Resources(**data.get("resources", {})),
            command=tuple(data.get("command", DEFAULT_COMMAND)),
            secret_env=dict(data.get("secret_env", {})),
            image_credentials=ImageCredentials(**credentials) if credentials else None,
        )

    def merged(self, patch: Any, repository_editable: bool = False) -> WorkspaceSpec:
        """Apply a PATCH body (top-level keys replace) and validate the result.

        The name and runtime are fixed at create: changing them would mean
        different storage, which only delete may remove. The repository can be
        corrected until its first successful clone (`repository_editable`):
        init clones it once. Secrets (`secret_env`, `image_credentials`) can be
        rotated at any time.
        """
        if not isinstance(patch, dict):
            raise SpecError({"body": "must be an object"})
        errors: dict[str, str] = {}
        _check_keys(patch, {"image", "env", "files", "resources", "command", "repository",
                            "secret_env", "image_credentials"}, "", errors)
        for key in ("name", "runtime"):
            if key in patch:
                errors[key] = "cannot be changed after create"
        if "repository" in patch and not repository_editable:
            errors["repository"] = ("cannot be changed after the repository was cloned "
                                    "(init clones it once; the files are the user's now)")
        if errors:
            raise SpecError(errors)
        merged = {**self.to_dict(), **patch}
        try:
            new = self.parse(merged)
        except SpecError as e:
            # What the PATCH leaves alone keeps the rules it was stored under
            # (SPEC_VERSION); what it sends meets today's, and so does the
            # stack config's hard size budget.
            sent = {k: v for k, v in e.errors.items() if _top_field(k) in patch}
            if not sent:
                _check_config_budget(merged, sent)
            if sent:
                raise SpecError(sent) from None
            new = self.stored(merged)
        old_size = quantity_value(self.resources.storage)
        if quantity_value(new.resources.storage) < old_size:
            raise SpecError(
                {"resources.storage": f"cannot shrink below {self.resources.storage}; "
                 "storage can only grow"}
            )
        return new


def _top_field(path: str) -> str:
    """The top-level field of an error path: 'files[0].content' -> 'files'."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def _config_len(value: Any) -> int:
    """Bytes `value` takes in PULUMI_CONFIG: JSON text (as in stack config),
    encoded again as a Go JSON string (which also escapes <, > and &)."""
    once = json.dumps(value, sort_keys=True)
    twice = json.dumps(once, ensure_ascii=False)
    return len(twice.encode()) + 5 * sum(once.count(c) for c in "<>&")


def _check_config_budget(data: dict, errors: dict[str, str]) -> None:
    """Reject a spec too large for stack config, naming its largest value."""
    total = _config_len(data)
    if total <= MAX_CONFIG_BYTES:
        return
    sizes = {f"files[{i}].content": _config_len(f.get("content", ""))
             for i, f in enumerate(data.get("files", []))}
    for where in ("env", "secret_env"):
        sizes.update({f"{where}.{k}": _config_len(v) for k, v in data.get(where, {}).items()})
    largest = max(sizes, key=sizes.get) if sizes else "body"
    errors[largest] = (f"too large: the spec takes {total} bytes once encoded for stack config, "
                       f"at most {MAX_CONFIG_BYTES} (text with many quotes, backslashes or "
                       "non-ASCII characters takes more)")


def _collect(errors: dict[str, str], fn):  # noqa: ANN001, ANN202
    try:
        return fn()
    except SpecError as e:
        errors.update(e.errors)
        return None


def _parse_repository(obj: Any, errors: dict[str, str]) -> Repository | None:
    obj = _check_keys(obj, {"url", "ref", "credential", "username"}, "repository", errors)
    url = obj.get("url")
    if not isinstance(url, str) or not (_URL.match(url) or _SSH_SCP.match(url)) or len(url) > 2048:
        errors["repository.url"] = "must be an https://, ssh://, user@host:path or file:// URL"
    elif url.startswith("https://") and "@" in url.split("/", 3)[2]:
        errors["repository.url"] = "must not embed credentials; use repository.credential"
    ref = obj.get("ref", "main")
    if not isinstance(ref, str) or not _GIT_REF.match(ref):
        errors["repository.ref"] = "must be a branch, tag or commit name"
    credential = obj.get("credential")
    if credential is not None and (
        not isinstance(credential, str) or not credential or len(credential) > 16384
    ):
        errors["repository.credential"] = "must be a non-empty string"
    username = obj.get("username")
    if username is not None and (not isinstance(username, str) or not _USERNAME.match(username)):
        errors["repository.username"] = "must be a user name (letters, digits, '._@+-')"
    if any(k.startswith("repository") for k in errors):
        return None
    return Repository(url=url, ref=ref, credential=credential, username=username)


def _parse_image_credentials(obj: Any, errors: dict[str, str]) -> ImageCredentials | None:
    where = "image_credentials"
    obj = _check_keys(obj, {"username", "password"}, where, errors)
    username, password = obj.get("username"), obj.get("password")
    if not isinstance(username, str) or not _USERNAME.match(username):
        errors[f"{where}.username"] = "must be a user name (letters, digits, '._@+-')"
    if (not isinstance(password, str) or not password or len(password) > 16384
            or "\0" in password):
        errors[f"{where}.password"] = "must be a non-empty string"
    if any(k.startswith(where) for k in errors):
        return None
    return ImageCredentials(username=username, password=password)


def _parse_env(obj: Any, errors: dict[str, str], where: str = "env") -> dict[str, str]:
    if not isinstance(obj, dict):
        errors[where] = "must be an object of NAME: value"
        return {}
    if len(obj) > MAX_ENV:
        errors[where] = f"at most {MAX_ENV} variables"
    for k, v in obj.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k) or k.startswith("STACKSPACE_"):
            errors[f"{where}.{k}"] = "must be a name like FOO_BAR (not STACKSPACE_*)"
        elif not isinstance(v, str) or "\0" in v or len(v) > 32768:
            errors[f"{where}.{k}"] = "must be a string"
    return dict(obj)


def _parse_files(obj: Any, errors: dict[str, str]) -> tuple[WorkspaceFile, ...]:
    if not isinstance(obj, list) or len(obj) > MAX_FILES:
        errors["files"] = f"must be a list of at most {MAX_FILES} files"
        return ()
    out: list[WorkspaceFile] = []
    seen: set[str] = set()
    for i, item in enumerate(obj):
        where = f"files[{i}]"
        item = _check_keys(item, {"path", "content", "mode", "secret"}, where, errors)
        path = _collect(errors, lambda item=item, where=where: validate_relative_path(
            item.get("path"), f"{where}.path"))
        if path in seen:
            errors[f"{where}.path"] = "duplicate path"
        seen.add(path)
        content = item.get("content", "")
        if not isinstance(content, str) or len(content.encode()) > MAX_FILE_BYTES:
            errors[f"{where}.content"] = f"must be a string of at most {MAX_FILE_BYTES} bytes"
        mode = item.get("mode", "0644")
        if not isinstance(mode, str) or not _MODE.match(mode):
            errors[f"{where}.mode"] = "must be an octal mode like '0644'"
        secret = item.get("secret", False)
        if not isinstance(secret, bool):
            errors[f"{where}.secret"] = "must be true or false"
        if path and isinstance(content, str) and isinstance(mode, str) and isinstance(secret, bool):
            out.append(WorkspaceFile(path=path, content=content, mode=mode.rjust(4, "0"),
                                     secret=secret))
    return tuple(out)


def _parse_resources(obj: Any, errors: dict[str, str]) -> Resources:
    obj = _check_keys(obj, {"cpu", "memory", "storage"}, "resources", errors)
    values = {**asdict(Resources()), **{k: v for k, v in obj.items() if k in ("cpu", "memory",
                                                                               "storage")}}
    for key, value in values.items():
        if not isinstance(value, str) or not _QUANTITY.match(value) or quantity_value(value) <= 0:
            errors[f"resources.{key}"] = "must be a positive quantity like '2', '500m' or '4Gi'"
    if not any(k.startswith("resources.") for k in errors):
        if quantity_value(values["memory"]) < 16 * 2**20:
            errors["resources.memory"] = "must be at least 16Mi"
        if quantity_value(values["storage"]) < 2**20:
            errors["resources.storage"] = "must be at least 1Mi"
    return Resources(**values) if not any(k.startswith("resources") for k in errors) else \
        Resources()
