"""Run the stack program on Pulumi's mock runtime and record every registration.

Besides the inputs Pulumi's mocks expose, the recorder keeps the resource
options (protect, ignoreChanges, deleteBeforeReplace, dependencies) and the
raw wire form, where secret values are wrapped in Pulumi's secret envelope:
that lets tests prove a secret never travels as a plain value.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"


@dataclass
class Registration:
    type: str
    name: str
    inputs: dict[str, Any]  # wire form: secrets still wrapped
    protect: bool
    ignore_changes: list[str]
    delete_before_replace: bool
    dependencies: list[str]
    urn: str
    replace_on_changes: list[str] = field(default_factory=list)
    hooks: dict[str, list[str]] = field(default_factory=dict)  # e.g. afterCreate: [names]

    def plain(self) -> dict[str, Any]:
        return unwrap(self.inputs)


def unwrap(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return unwrap(value.get("value"))
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def plain_strings(value: Any) -> list[str]:
    """Every string in `value` that is NOT inside a secret envelope."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return []
        return [s for k, v in value.items() for s in [k, *plain_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in plain_strings(v)]
    return [value] if isinstance(value, str) else []


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, outputs: dict[str, dict[str, Any]]):
        self.outputs = outputs

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        extra = self.outputs.get(args.name, {})
        return [f"{args.name}-id", {**args.inputs, **extra}]

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


class _HookRecorder:
    """Pulumi's mock monitor has no callback server for resource hooks: they
    are registered here by name (and bound in the registrations), never run."""

    def register_resource_hook(self, hook: Any) -> None:
        pass

    def register_error_hook(self, hook: Any) -> None:
        pass


class ProgramRun:
    def __init__(self, registrations: list[Registration], exports: dict[str, Any]):
        self.registrations = registrations
        self.exports = exports

    def by_type(self, suffix: str) -> list[Registration]:
        return [r for r in self.registrations if r.type.endswith(suffix)]

    def one(self, suffix: str) -> Registration:
        found = self.by_type(suffix)
        assert len(found) == 1, f"expected one {suffix}, got {[r.name for r in found]}"
        return found[0]

    def types(self) -> set[str]:
        return {r.type for r in self.registrations}


def run_program(build, cfg, outputs: dict[str, dict[str, Any]] | None = None) -> ProgramRun:
    """Run `build(cfg)` under mocks; `outputs` adds provider outputs by resource name."""
    # pulumi.runtime.test runs on the current event loop; an earlier asyncio.run()
    # in the same session (the exec client) leaves none behind.
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(_Mocks(outputs or {}), preview=False)
    pulumi.runtime.settings.SETTINGS.callbacks = _HookRecorder()
    monitor = pulumi.runtime.settings.get_monitor()
    seen: list[Registration] = []
    original = monitor.RegisterResource

    def record(request):  # noqa: ANN001, ANN202
        response = original(request)
        seen.append(Registration(
            type=request.type,
            name=request.name,
            inputs=json_format.MessageToDict(request.object),
            protect=bool(request.protect),
            ignore_changes=list(request.ignoreChanges),
            delete_before_replace=bool(request.deleteBeforeReplace),
            dependencies=list(request.dependencies),
            urn=response.urn,
            replace_on_changes=list(request.replaceOnChanges),
            hooks=json_format.MessageToDict(request.hooks) if request.HasField("hooks") else {},
        ))
        return response

    monitor.RegisterResource = record
    exports: dict[str, Any] = {}
    original_export = pulumi.export

    def capture_export(name: str, value: Any) -> None:
        exports[name] = value

    @pulumi.runtime.test
    def program():
        pulumi.export = capture_export
        try:
            build(cfg)
        finally:
            pulumi.export = original_export

    program()
    return ProgramRun(seen, exports)
