"""The workspace spec: pydantic models shared by the Pulumi program, the
service, the OpenAPI document (service.openapi publishes their JSON Schema)
and the CLI, the one place each field and rule is written.

Everything a user sends passes through `WorkspaceSpec.parse` (a create) or
`merged` (a PATCH), which reject unknown fields and bad values with a
`SpecError` naming the field. Values that survive validation are safe to place
in resource names, labels and container environments; none of them ever
reaches a shell as code (the init script reads them from its environment).
Secret values (a repository credential, secret files, `secret_env`, the image
password) are left out of every repr.
"""

from __future__ import annotations

import copy
import json
import re
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import PydanticCustomError

from components.schema import Pattern, field_errors, rule
from components.schema import SpecError as SpecError  # raised by parse/merged

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
MAX_SECRET = 16384
# Stands for a secret value in API responses and in a stored spec's public form.
REDACTED = "[secret]"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME = r"^(?!STACKSPACE_)[A-Za-z_][A-Za-z0-9_]*$"
# Docker reference grammar (distribution/reference), simplified: optional
# registry host[:port], lowercase path components, optional tag and digest.
IMAGE = (r"^(?:(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]+)?/)?"
         r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
         r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
         r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
         r"(?:@sha256:[a-f0-9]{64})?$")
GIT_REF = r"^(?!-)(?!.*\.\.)(?!.*//)[A-Za-z0-9._/+-]{1,200}$"
# https://, ssh:// or file:// without shell metacharacters, or scp-like
# user@host:path; an https URL may not carry credentials (they would be stored
# and shown in the clear: repository.credential is the secret's place).
REPO_URL = (r"^(?!https://[^/]*@)(?:(?:https|ssh|file)://[^\s'" '"' r"`$\\;|&<>]+"
            r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._/~+-]+)$")
# Under the workspace root: relative, no '.', '..' or empty part, no control
# character, not under .stackspace/ (init's own markers).
RELATIVE_PATH = (r"^(?!\.stackspace(?:/|$))(?!(?:.*/)?\.{1,2}(?:/|$))"
                 r"[^/\x00-\x1f]+(?:/[^/\x00-\x1f]+)*$")
# The Kubernetes quantity grammar (apimachinery resource.Quantity), unsigned
# or '+': a number, then a binary or decimal SI suffix or a decimal exponent.
QUANTITY = (r"^\+?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
            r"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
MODE = r"^0?[0-7]{3}$"
USERNAME = r"^[A-Za-z0-9._@+-]{1,255}$"
NO_NUL = r"^[^\x00]*$"

_QUANTITY = re.compile(QUANTITY)


def quantity_value(text: str) -> float:
    """Numeric value of a Kubernetes quantity such as '2Gi', '500m' or '1E'."""
    if not isinstance(text, str) or not _QUANTITY.fullmatch(text):
        raise ValueError(f"not a quantity: {text!r}")
    from kubernetes.utils import parse_quantity  # 0.2 s to import: only when needed

    try:
        return float(parse_quantity(text))
    except (ValueError, InvalidOperation, OverflowError) as e:
        raise ValueError(f"not a quantity: {text!r}") from e


def registry_host(image: str) -> str:
    """The registry an image reference pulls from ('docker.io' when none is named)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# --- field types: each rule once, enforced and published in the schema -------

def _invalid() -> PydanticCustomError:
    # The message is the field's description (components.schema.field_errors).
    return PydanticCustomError("spec_value", "not valid")


def _at_least(minimum: float) -> AfterValidator:
    def check(value: str) -> str:
        if quantity_value(value) < minimum:
            raise _invalid()
        return value
    return AfterValidator(check)


def _fits_bytes(limit: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value.encode()) > limit:  # maxLength counts characters, the limit bytes
            raise _invalid()
        return value
    return AfterValidator(check)


def _secret(description: str, **kw: Any) -> Any:
    """A write-only field, left out of reprs; answers show REDACTED."""
    return Field(description=description, repr=False,
                 json_schema_extra={"writeOnly": True}, **kw)


Name = Annotated[StrictStr, Field(max_length=MAX_NAME), Pattern(DNS_LABEL)]
Quantity = Annotated[StrictStr, Field(max_length=64), Pattern(QUANTITY),
                     _at_least(Decimal("1e-9"))]
EnvName = Annotated[StrictStr, Pattern(ENV_NAME)]
EnvValue = Annotated[StrictStr, Field(max_length=32768), Pattern(NO_NUL)]
EnvMap = Annotated[dict[EnvName, EnvValue], Field(max_length=MAX_ENV)]
UserName = Annotated[StrictStr, Pattern(USERNAME)]
SecretText = Annotated[StrictStr, Field(min_length=1, max_length=MAX_SECRET), Pattern(NO_NUL)]
CommandArg = Annotated[StrictStr, Field(min_length=1), Pattern(NO_NUL)]

_ENV_RULE = (f"must be an object of NAME: value, at most {MAX_ENV}; names like FOO_BAR "
             "(not STACKSPACE_*), values strings without NUL")
_NAME_RULE = f"must be a DNS-1123 label (a-z, 0-9, '-'), at most {MAX_NAME} chars"
_USERNAME_RULE = "must be a user name (letters, digits, '._@+-')"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Repository(_Model):
    """Cloned once into the workspace by init; fixed after its first clone."""

    url: Annotated[StrictStr, Field(max_length=2048), Pattern(REPO_URL)] = Field(
        description="must be an https://, ssh://, user@host:path or file:// URL, without "
        "embedded credentials (use repository.credential)",
        examples=["https://git.example.test/team/app.git", "git@git.example.test:team/app.git"])
    # None: the branch the repository's HEAD names (its default branch).
    ref: Annotated[StrictStr, Pattern(GIT_REF)] | None = Field(
        None, description="must be a branch, tag or commit name (left out: the "
        "repository's default branch)", examples=["main", "v1.2"])
    credential: SecretText | None = _secret(
        "must be a non-empty string: a token (https) or password; write-only",
        default=None, examples=["ghp-example-token"])
    # Sent with the credential (GitLab OAuth: "oauth2", Bitbucket: "x-token-auth").
    # None keeps the old behaviour: the credential answers both prompts.
    username: UserName | None = Field(None, description=_USERNAME_RULE + ", sent with the "
                                      "credential", examples=["oauth2"])


class ImageCredentials(_Model):
    """Registry login for pulling `image`. The password is secret: the public
    form of a stored spec (public_dict) holds REDACTED in its place."""

    username: UserName = Field(description=_USERNAME_RULE, examples=["puller"])
    password: SecretText = _secret("must be a non-empty string; write-only",
                                   examples=["registry-password"])


class WorkspaceFile(_Model):
    """A file init writes under the workspace root (once, if it is missing)."""

    path: Annotated[StrictStr, Field(max_length=255), Pattern(RELATIVE_PATH)] = Field(
        description="must be a relative path under the workspace root (no leading '/', no "
        "'.', '..' or empty parts, not under .stackspace/)", examples=["notes/todo.txt"])
    # Left out of reprs whatever `secret` says: a repr cannot look at siblings.
    content: Annotated[StrictStr, Field(max_length=MAX_FILE_BYTES),
                       _fits_bytes(MAX_FILE_BYTES)] = Field(
        "", repr=False, examples=["hello\n"],
        description=f"must be a string of at most {MAX_FILE_BYTES} bytes (UTF-8); "
        "write-only when secret")
    mode: Annotated[StrictStr, Pattern(MODE), AfterValidator(lambda m: m.rjust(4, "0"))] = Field(
        "0644", description="must be an octal mode like '0644'", examples=["0600", "755"])
    secret: StrictBool = Field(False, description="must be true or false; true keeps the "
                               "content out of answers and plain stack config",
                               examples=[True])


_QUANTITY_RULE = "must be a positive quantity like '2', '500m' or '4Gi'"


class Resources(_Model):
    """Kubernetes quantities (Docker: limits from the same values)."""

    cpu: Quantity = Field("1", description=_QUANTITY_RULE, examples=["2", "500m"])
    memory: Annotated[Quantity, _at_least(16 * 2**20)] = Field(
        "1Gi", description=_QUANTITY_RULE + ", at least 16Mi", examples=["4Gi", "512Mi"])
    storage: Annotated[Quantity, _at_least(2**20)] = Field(
        "1Gi", description=_QUANTITY_RULE + ", at least 1Mi; it can only grow",
        examples=["10Gi", "1Ti"])


_MUTABLE_FIELDS = ("image", "env", "files", "resources", "command", "repository",
                   "secret_env", "image_credentials")
_EXAMPLE = {
    "name": "dev", "image": "registry.example.test:5000/team/ws:1",
    "repository": {"url": "https://git.example.test/r.git", "ref": "main",
                   "credential": "tok-123", "username": "oauth2"},
    "env": {"EDITOR": "vim"}, "secret_env": {"API_TOKEN": "ws-token-456"},
    "image_credentials": {"username": "puller", "password": "pull-789"},
    "files": [{"path": ".netrc", "content": "machine x", "mode": "0600", "secret": True}],
    "resources": {"cpu": "2", "memory": "4Gi", "storage": "10Gi"},
    "command": ["sleep", "infinity"],
}


class WorkspaceSpec(_Model):
    """A workspace as its owner asks for it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})

    name: Name = Field(description=_NAME_RULE + "; fixed at create", examples=["dev", "api-2"])
    image: Annotated[StrictStr, Field(max_length=255), Pattern(IMAGE)] = Field(
        DEFAULT_IMAGE, description="must be an image reference like 'registry/name:tag'",
        examples=["debian:12", "registry.example.test:5000/team/ws:1"])
    runtime: Name | None = Field(None, description="must be the name of a runtime the "
                                 "service has; absent: its default. Fixed at create",
                                 examples=["local"])
    repository: Repository | None = Field(None, description="must be an object "
                                          "{url, ref, credential, username}")
    env: EnvMap = Field(default_factory=dict, description=_ENV_RULE,
                        examples=[{"EDITOR": "vim"}])
    files: tuple[WorkspaceFile, ...] = Field(
        (), max_length=MAX_FILES, description=f"must be a list of at most {MAX_FILES} files "
        "{path, content, mode, secret} with distinct paths")
    resources: Resources = Field(default_factory=Resources,
                                 description="must be an object {cpu, memory, storage}")
    command: tuple[CommandArg, ...] = Field(
        tuple(DEFAULT_COMMAND), min_length=1, max_length=64,
        description="must be a non-empty list of at most 64 non-empty strings (argv, no shell)",
        examples=[["sleep", "infinity"]])
    # Secret values: names are public, values are Pulumi secrets / Kubernetes
    # Secrets, never echoed.
    secret_env: EnvMap = _secret(_ENV_RULE + "; not also in env; values write-only",
                                 default_factory=dict, examples=[{"API_TOKEN": "ws-token"}])
    image_credentials: ImageCredentials | None = Field(
        None, description="must be an object {username, password}: the registry login")

    @field_validator("files")
    @classmethod
    def _distinct_paths(cls, files: tuple[WorkspaceFile, ...]) -> tuple[WorkspaceFile, ...]:
        seen: set[str] = set()
        dup = {}
        for i, f in enumerate(files):
            if f.path in seen:
                dup[f"files[{i}].path"] = "duplicate path"
            seen.add(f.path)
        if dup:
            raise rule("duplicate path", dup)
        return files

    @model_validator(mode="after")
    def _across_fields(self) -> WorkspaceSpec:
        if errors := self.rule_errors():
            raise rule("; ".join(errors.values()), errors)
        return self

    def rule_errors(self, sent: Any = ("env", "secret_env")) -> dict[str, str]:
        """The rules across fields: a name in both env maps (named where it
        was `sent`), then the stack config budget."""
        shared = [k for k in self.secret_env if k in self.env]
        if shared and "secret_env" in sent:
            return {f"secret_env.{k}": "already set in env" for k in shared}
        if shared and "env" in sent:
            return {f"env.{k}": "already set in secret_env" for k in shared}
        return _config_budget(self.to_dict())

    # --- reading what users send ---------------------------------------------
    @classmethod
    def parse(cls, data: Any) -> WorkspaceSpec:
        """Validate a create request into a spec."""
        if not isinstance(data, dict):
            raise SpecError({"body": "must be an object"})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(field_errors(e, spec_schema())) from None

    @classmethod
    def check_patch(cls, patch: Any, repository_editable: bool = True) -> WorkspacePatch:
        """Validate what a PATCH sends (each field as at create), not yet
        merged. The name and runtime are fixed at create: changing them would
        mean different storage, which only delete may remove. The repository
        can be corrected until its first successful clone (init clones it
        once). Secrets (`secret_env`, `image_credentials`) rotate any time."""
        if not isinstance(patch, dict):
            raise SpecError({"body": "must be an object"})
        errors = {k: "cannot be changed after create" for k in ("name", "runtime")
                  if k in patch}
        if "repository" in patch and not repository_editable:
            errors["repository"] = ("cannot be changed after the repository was cloned "
                                    "(init clones it once; the files are the user's now)")
        try:
            checked = WorkspacePatch.model_validate(
                {k: v for k, v in patch.items() if k not in ("name", "runtime")})
        except ValidationError as e:
            errors.update(field_errors(e, patch_schema()))
            checked = None
        if errors or checked is None:
            raise SpecError(errors)
        return checked

    def merged(self, patch: Any, repository_editable: bool = False) -> WorkspaceSpec:
        """Apply a PATCH body (top-level keys replace). What it sends meets
        today's rules; what it leaves alone keeps the rules it was stored under
        (SPEC_VERSION); the result meets the rules across fields that involve
        what it sends, and always the stack config's hard size budget."""
        checked = self.check_patch(patch, repository_editable)
        new = self.model_copy(update={k: getattr(checked, k) for k in checked.model_fields_set})
        if errors := new.rule_errors(sent=patch):
            raise SpecError(errors)
        if quantity_value(new.resources.storage) < quantity_value(self.resources.storage):
            raise SpecError({"resources.storage": f"cannot shrink below "
                             f"{self.resources.storage}; storage can only grow"})
        return new

    # --- the forms it is kept and shown in -------------------------------------
    def to_dict(self, redact: bool = False) -> dict[str, Any]:
        """JSON form. With `redact`, secrets are replaced by a marker."""
        out = self.model_dump(mode="json", exclude_none=True)
        if redact:
            if "credential" in out.get("repository", {}):
                out["repository"]["credential"] = REDACTED
            for f in out["files"]:
                if f["secret"]:
                    f["content"] = REDACTED
            out["secret_env"] = {k: REDACTED for k in self.secret_env}
            if "image_credentials" in out:
                out["image_credentials"]["password"] = REDACTED
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
        (so a limit that tightens cannot strand a workspace): built without
        validation. Only what a user sends goes through `parse` or `merged`."""
        repository = data.get("repository")
        credentials = data.get("image_credentials")
        return cls.model_construct(
            name=data["name"],
            image=data.get("image", DEFAULT_IMAGE),
            runtime=data.get("runtime"),
            repository=Repository.model_construct(**repository) if repository else None,
            env=dict(data.get("env", {})),
            files=tuple(WorkspaceFile.model_construct(**{"content": "", **f})
                        for f in data.get("files", [])),
            resources=Resources.model_construct(**data.get("resources", {})),
            command=tuple(data.get("command", DEFAULT_COMMAND)),
            secret_env=dict(data.get("secret_env", {})),
            image_credentials=(ImageCredentials.model_construct(**credentials)
                               if credentials else None),
        )


def _no_defaults(schema: dict[str, Any]) -> None:
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)  # absent means unchanged, not a default


class _Patch(_Model):
    model_config = ConfigDict(json_schema_extra=_no_defaults)


def _patch_model() -> type[BaseModel]:
    """The PATCH body: the spec's mutable fields, each optional, same rules
    (derived from WorkspaceSpec, never written twice)."""
    fields: dict[str, Any] = {}
    for key in _MUTABLE_FIELDS:
        info = copy.copy(WorkspaceSpec.model_fields[key])
        info.default, info.default_factory = None, None  # absent: left as it is
        fields[key] = (info.annotation, info)
    return create_model("WorkspacePatch", __base__=_Patch, __doc__=(
        "Top-level fields replace the workspace's; absent ones stay."), **fields)


WorkspacePatch = _patch_model()


class _SpecJsonSchema(GenerateJsonSchema):
    """Field titles only repeat each property's name (the descriptions say
    what counts), and a map with a key pattern becomes propertyNames (JSON
    Schema's patternProperties would let any other key through)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def dict_schema(self, schema: Any) -> dict[str, Any]:
        out = super().dict_schema(schema)
        if len(patterns := out.pop("patternProperties", {})) == 1:
            (key, value), = patterns.items()
            out.update(propertyNames={"pattern": key}, additionalProperties=value)
        return out


def spec_schemas(ref_template: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """WorkspaceSpec, WorkspacePatch and the models they nest, by name, as
    JSON Schemas referring to each other through `ref_template` (the OpenAPI
    document's components/schemas)."""
    _, top = models_json_schema([(WorkspaceSpec, "validation"), (WorkspacePatch, "validation")],
                                ref_template=ref_template, schema_generator=_SpecJsonSchema)
    return top["$defs"]


@cache
def spec_schema() -> dict[str, Any]:
    """WorkspaceSpec's JSON Schema (its nested models under $defs)."""
    return WorkspaceSpec.model_json_schema(schema_generator=_SpecJsonSchema)


@cache
def patch_schema() -> dict[str, Any]:
    return WorkspacePatch.model_json_schema(schema_generator=_SpecJsonSchema)


_NAME = TypeAdapter(Name)


def validate_name(name: Any, field_name: str = "name") -> str:
    """A DNS-1123 label of at most MAX_NAME chars (names, runtimes, namespaces)."""
    try:
        return _NAME.validate_python(name)
    except ValidationError:
        raise SpecError({field_name: _NAME_RULE}) from None


def _config_len(value: Any) -> int:
    """Bytes `value` takes in PULUMI_CONFIG: JSON text (as in stack config),
    encoded again as a Go JSON string (which also escapes <, > and &)."""
    once = json.dumps(value, sort_keys=True)
    twice = json.dumps(once, ensure_ascii=False)
    return len(twice.encode()) + 5 * sum(once.count(c) for c in "<>&")


def _config_budget(data: dict[str, Any]) -> dict[str, str]:
    """A spec too large for stack config, as an error on its largest value."""
    total = _config_len(data)
    if total <= MAX_CONFIG_BYTES:
        return {}
    sizes = {f"files[{i}].content": _config_len(f.get("content", ""))
             for i, f in enumerate(data.get("files", []))}
    for where in ("env", "secret_env"):
        sizes.update({f"{where}.{k}": _config_len(v) for k, v in data.get(where, {}).items()})
    largest = max(sizes, key=sizes.get) if sizes else "body"  # type: ignore[arg-type]
    return {largest: f"too large: the spec takes {total} bytes once encoded for stack "
            f"config, at most {MAX_CONFIG_BYTES} (text with many quotes, backslashes or "
            "non-ASCII characters takes more)"}
