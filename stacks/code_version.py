"""Which component code a run applies (SPEC §6, §10): the checkout's git
commit when there is one, plus a digest of the program's code (every module of
components/, stacks/program.py, and what they import from the repository) and
of the provider packages the program imports, with their versions.

The digest decides whether a workspace is outdated: a commit that changes
nothing the program runs (docs, the service, tests) leaves every workspace
current. The commit is there to tell a reader which checkout it came from.

No Pulumi SDK import: the service process computes its own version once.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

OUTPUT = "code_version"  # the stack output that records it
PROJECT_DIR = Path(__file__).resolve().parent.parent
# The program's own packages (the rest of the repository is not program code).
PACKAGES = ("components", "stacks")
ROOTS = ("stacks.program",)
DIGEST_CHARS = 16
COMMIT_CHARS = 12


def module_sources(root: Path) -> dict[str, str]:
    """The source of every module of the program's packages under `root`."""
    sources: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((root / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            sources[name] = path.read_text()
    return sources


def imported_names(source: str) -> set[str]:
    """Every module name an `import` or `from ... import` of `source` names,
    with `from pkg import mod` also giving `pkg.mod` (it may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def program_modules(sources: Mapping[str, str], roots: Iterable[str] = ROOTS
                    ) -> dict[str, set[str]]:
    """The program's modules: every components module, the roots, and what they
    import from `sources`, transitively; each with the names it imports."""
    todo = [m for m in sources if m.split(".")[0] == "components"] + \
           [m for m in roots if m in sources]
    seen: dict[str, set[str]] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen[module] = imported_names(sources[module])
        todo.extend(n for n in seen[module] if n in sources and n not in seen)
    return seen


def providers(modules: Mapping[str, set[str]]) -> list[str]:
    """The Pulumi packages (SDK, providers) the program's modules import."""
    tops = {n.split(".")[0] for names in modules.values() for n in names}
    return sorted(t for t in tops if t == "pulumi" or t.startswith("pulumi_"))


def digest(sources: Mapping[str, str], versions: Mapping[str, str | None]) -> str:
    """Digest of the program's modules' sources and the provider versions."""
    modules = program_modules(sources)
    blob = json.dumps({"modules": {m: sources[m] for m in sorted(modules)},
                       "providers": {p: versions.get(p) for p in providers(modules)}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:DIGEST_CHARS]


def format_version(code_digest: str, commit: str | None) -> str:
    """`<digest>` or `<digest>@<commit>`: the digest first, it is what counts."""
    return f"{code_digest}@{commit[:COMMIT_CHARS]}" if commit else code_digest


def digest_of(version: str | None) -> str | None:
    """The code digest a recorded version carries (None: nothing recorded)."""
    if not isinstance(version, str) or not version:
        return None
    return version.split("@", 1)[0]


def outdated(recorded: str | None, current: str) -> bool:
    """Whether a workspace that recorded `recorded` runs other code than
    `current`. Nothing recorded (made before versions were recorded, or never
    applied): outdated, its code is unknown."""
    return digest_of(recorded) != digest_of(current)


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed versions of Python packages (import names), None if absent."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(root: Path) -> str | None:
    """The commit checked out at `root`, if it is a git checkout."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],  # noqa: S607
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def code_digest_at(root: Path) -> str:
    sources = module_sources(root)
    return digest(sources, package_versions(providers(program_modules(sources))))


def version_at(root: Path) -> str:
    """The code version of the program checked out at `root`."""
    return format_version(code_digest_at(root), git_commit(root))


@cache
def current() -> str:
    """The code version of the program this process runs (computed once)."""
    return version_at(PROJECT_DIR)


def current_digest() -> str:
    return digest_of(current()) or ""
