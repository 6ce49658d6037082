"""The file API's pure logic: request paths, the POSIX sh that runs inside the
workspace, the answers it prints, and the check of an uploaded tar stream.

Confinement is decided inside the workspace at the time of the operation (the
symlinks live in its filesystem): :data:`SCRIPT` walks the path one component at
a time from the root with ``cd -P``, refuses an absolute symlink or one whose
``readlink -f`` leaves the root, and then works on names relative to the real
directory it reached. It needs only /bin/sh and BusyBox-or-coreutils applets
(``stat -c``, ``readlink``, ``tar``, ``touch -t``), and runs as the workspace user
(never root), so a path raced by the workspace's own processes reaches nothing
that user could not reach with ``exec`` anyway.
"""

from __future__ import annotations

import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from components.spec import WORKSPACE_ROOT

MAX_PATH = 4096
MAX_LISTING_BYTES = 16 << 20
# The upload's temporary file, at the root until it is complete (service.files_api
# removes it with the "abort" op when an upload breaks off).
TMP_NAME = re.compile(r"\.stackspace-(put|tar)\.[0-9]+")

# $1 op, $2 root, $3 path relative to the root ("" is the root), then the op's
# arguments. The first stdout line is "ERR <kind> <path>" or "OK ..."/"READY ...";
# the data (file bytes, listing records, a tar stream) follows it.
SCRIPT = r"""
set -f
op=$1; root=$2; rel=$3; shift 3
nl='
'
cleanup=""
fail() { [ -z "$cleanup" ] || rm -f -- "$cleanup"; printf 'ERR %s %s\n' "$1" "$2"; exit 3; }
cd -P -- "$root" 2>/dev/null || fail not-found ""
top=$(pwd -P)
inside() { case "$1/" in "$top"/*) return 0;; esac; return 1; }
check_link() {
  [ -L "$1" ] || return 0
  t=$(readlink -- "$1") || fail not-found "$2"
  case $t in /*) fail symlink-absolute "$2";; esac
  r=$(readlink -f -- "$1" 2>/dev/null) && [ -n "$r" ] || fail symlink-dangling "$2"
  inside "$r" || fail symlink-escape "$2"
}
walk() {  # mk: 0 all must exist, 1 create missing folders, p stop at the first missing
  shown=""; base=""
  IFS=/; set -- $1; IFS=" 	$nl"
  while [ $# -gt 0 ]; do
    c=$1; shift; shown=${shown:+$shown/}$c
    check_link "$c" "$shown"
    if [ $# -eq 0 ]; then base=$c; return 0; fi
    if [ ! -e "$c" ] && [ ! -L "$c" ]; then
      [ "$mk" = p ] && { base=$c; return 0; }
      [ "$mk" = 1 ] && { mkdir -- "$c" 2>/dev/null || fail denied "$shown"; }
    fi
    [ -e "$c" ] || fail not-found "$shown"
    [ -d "$c" ] || fail not-dir "$shown"
    cd -P -- "$c" 2>/dev/null || fail denied "$shown"
    inside "$(pwd -P)" || fail symlink-escape "$shown"
  done
}
enter() {
  cd -P -- "${base:-.}" 2>/dev/null || fail denied "$shown"
  inside "$(pwd -P)" || fail symlink-escape "$shown"
}
received() {
  n=$(($(wc -c < "$1")))
  if [ "$2" != - ] && [ "$n" != "$2" ]; then rm -f -- "$1"; fail short "$n"; fi
}
case $op in
get|stat)
  mk=0; walk "$rel"; t=${base:-.}
  [ -e "$t" ] || fail not-found "$shown"
  s=$(stat -L -c '%f %s %Y' -- "$t") || fail denied "$shown"
  if [ -d "$t" ]; then kind=dir; else kind=file; fi
  printf 'OK %s %s\n' "$kind" "$s"
  [ "$op" = stat ] && exit 0
  if [ "$kind" = dir ]; then
    enter
    [ "$1" = tar ] && exec tar -cf - .
    set +f
    for f in * .[!.]* ..?*; do
      [ -e "$f" ] || [ -L "$f" ] || continue
      s=$(stat -c '%f %s %Y' -- "$f") || continue
      printf '%s %s\0' "$s" "$f"
    done
    exit 0
  fi
  [ -f "$t" ] || fail not-regular "$shown"
  exec cat -- "$t" ;;
put)
  mk=p; walk "$rel"
  [ -n "$base" ] || fail is-dir ""
  [ -d "$base" ] && fail is-dir "$shown"
  tmp="$top/.stackspace-put.$$"
  : > "$tmp" 2>/dev/null || fail denied "$shown"
  printf 'READY %s\n' "${tmp##*/}"
  cat > "$tmp" || { rm -f -- "$tmp"; fail failed "$shown"; }
  received "$tmp" "$3"
  cleanup=$tmp; cd -P -- "$top"; mk=1; walk "$rel"
  [ -d "$base" ] && { rm -f -- "$tmp"; fail is-dir "$shown"; }
  if [ "$1" = - ] && [ -f "$base" ] && [ ! -L "$base" ]; then
    m=$(stat -c %a -- "$base") && chmod "$m" "$tmp"
  elif [ "$1" != - ]; then
    chmod "$1" "$tmp" || { rm -f -- "$tmp"; fail failed "$shown"; }
  fi
  if [ "$2" != - ]; then
    TZ=UTC0 touch -t "$2" "$tmp" || { rm -f -- "$tmp"; fail failed "$shown"; }
  fi
  mv -f -- "$tmp" "$base" || { rm -f -- "$tmp"; fail failed "$shown"; }
  printf 'OK file %s\n' "$(stat -c '%f %s %Y' -- "$base")" ;;
tarin)
  mk=p; walk "$rel"
  [ -z "$base" ] || [ ! -e "$base" ] || [ -d "$base" ] || fail not-dir "$shown"
  tmp=".stackspace-tar.$$"
  : > "$top/$tmp" 2>/dev/null || fail denied "$shown"
  printf 'READY %s\n' "$tmp"
  cat > "$top/$tmp" || { rm -f -- "$top/$tmp"; fail failed "$shown"; }
  received "$top/$tmp" "$1"
  printf 'OK %s\n' "$tmp" ;;
untar)
  tar="$top/$1"
  [ -f "$tar" ] && [ ! -L "$tar" ] || fail not-found "$1"
  if [ "$2" = abort ]; then rm -f -- "$tar"; printf 'OK\n'; exit 0; fi
  cleanup=$tar; mk=1; walk "$rel"
  if [ -n "$base" ] && [ ! -e "$base" ] && [ ! -L "$base" ]; then
    mkdir -- "$base" 2>/dev/null || { rm -f -- "$tar"; fail denied "$shown"; }
  fi
  enter
  bad=$(tar -tf "$tar" | while IFS= read -r m; do
    while :; do case $m in ./*) m=${m#./};; *) break;; esac; done
    p=""; IFS=/; set -- ${m%/}; IFS=" 	$nl"
    while [ $# -gt 1 ]; do
      p=${p:+$p/}$1; shift
      if [ -L "$p" ]; then printf '%s\n' "$p"; exit 0; fi
    done
  done)
  if [ -n "$bad" ]; then rm -f -- "$tar"; fail symlink-parent "${shown:+$shown/}$bad"; fi
  tar -xf "$tar" >&2 || { rm -f -- "$tar"; fail failed "$shown"; }
  rm -f -- "$tar"
  printf 'OK\n' ;;
abort)
  case $1 in .stackspace-put.*|.stackspace-tar.*) rm -f -- "$top/$1";; esac
  printf 'OK\n' ;;
*) fail bad-op "$op" ;;
esac
"""

# kind -> (problem kind, detail template); {path} is the request path shown to the user.
ERRORS: dict[str, tuple[str, str]] = {
    "not-found": ("not-found", "{path}: no such file or directory in the workspace"),
    "not-dir": ("conflict", "{path}: not a directory"),
    "is-dir": ("conflict", "{path}: is a directory"),
    "not-regular": ("conflict", "{path}: not a regular file or directory"),
    "denied": ("forbidden", "{path}: permission denied for the workspace user"),
    "symlink-absolute": ("forbidden", "{path}: is an absolute symlink; refused"),
    "symlink-dangling": ("forbidden", "{path}: is a symlink that resolves nowhere; refused"),
    "symlink-escape": ("forbidden", "{path}: symlink points outside the workspace root; refused"),
    "symlink-parent": ("forbidden", "{path}: an archive member passes through a symlink; "
                                    "refused, nothing was written"),
    "short": ("bad-request", "the upload ended early: {path} bytes arrived; nothing was written"),
    "failed": ("internal", "{path}: the write failed in the workspace (disk full?)"),
}


class PathError(ValueError):
    """A request path that is refused before anything runs."""


def normalize(path: str) -> str:
    """The request path as components relative to the root ("" is the root).
    ``..`` anywhere is refused (never resolved lexically: a symlinked parent
    would make that wrong); "." and empty components are dropped."""
    if len(path) > MAX_PATH:
        raise PathError(f"path is longer than {MAX_PATH} characters")
    if any(c in path for c in "\0\n\r"):
        raise PathError("path contains a NUL or newline character")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"{path}: '..' is not allowed in a workspace path")
    return "/".join(parts)


# The script travels on stdin ahead of any data, not in the argv: in the ticket it
# would overflow the WebSocket handshake's header limit. The shell's read builtin
# takes a pipe byte by byte, so the data after the end line is left for the script.
END = "#end-of-script"
BOOTSTRAP = (f"s=; nl='\n'; while IFS= read -r l && [ \"$l\" != '{END}' ]; "
             'do s=$s$l$nl; done; eval "$s"')
PRELUDE = f"{SCRIPT}\n{END}\n".encode()


def command(op: str, rel: str, *args: str) -> list[str]:
    """The argv run in the workspace (values travel as arguments, never as shell text;
    the script itself follows as :data:`PRELUDE` on stdin)."""
    return ["/bin/sh", "-c", BOOTSTRAP, "sh", op, WORKSPACE_ROOT, rel, *args]


@dataclass(frozen=True)
class Entry:
    """A file's metadata as stat(1) printed it: raw mode (hex), size, mtime."""

    type: str
    mode: int
    size: int
    mtime: int

    def view(self) -> dict[str, Any]:
        return {"type": self.type, "size": self.size,
                "mode": f"{stat.S_IMODE(self.mode):04o}", "mtime": self.mtime}


def entry_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"),
                       (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "other"


def parse_stat(text: str) -> Entry:
    """``%f %s %Y`` (raw mode in hex, size, mtime) into an Entry."""
    raw, size, mtime = text.split()[:3]
    mode = int(raw, 16)
    return Entry(entry_type(mode), mode, int(size), int(mtime))


@dataclass(frozen=True)
class Answer:
    """The script's first line: ``OK <kind> <stat>``, ``OK <word>``, ``READY [tmp]``
    or ``ERR <kind> <path>``."""

    status: str
    words: list[str]
    error: str = ""
    arg: str = ""

    def entry(self) -> Entry:
        return parse_stat(" ".join(self.words[1:4]))


def parse_answer(line: bytes) -> Answer:
    text = line.decode("utf-8", "replace").rstrip("\n")
    head, _, rest = text.partition(" ")
    if head == "ERR":
        kind, _, arg = rest.partition(" ")
        return Answer("ERR", [], kind, arg)
    if head in ("OK", "READY"):
        return Answer(head, rest.split())
    raise ValueError(f"unexpected answer from the workspace: {text[:200]!r}")


def parse_listing(data: bytes) -> list[dict[str, Any]]:
    """NUL-terminated ``<hexmode> <size> <mtime> <name>`` records, sorted by name."""
    out = []
    for record in data.split(b"\0"):
        if not record:
            continue
        raw, size, mtime, name = record.split(b" ", 3)
        e = parse_stat(f"{raw.decode()} {size.decode()} {mtime.decode()}")
        out.append({"name": name.decode("utf-8", "surrogateescape"), **e.view()})
    return sorted(out, key=lambda x: x["name"])


# --- upload headers -----------------------------------------------------------------

def parse_mode(value: str | None) -> str:
    """An octal mode header ("0644", "755") as chmod's argument, "-" when absent."""
    if value is None or value == "":
        return "-"
    if not re.fullmatch(r"0?[0-7]{3,4}", value) or int(value, 8) > 0o7777:
        raise PathError(f"X-Stackspace-Mode: {value!r} is not an octal mode like 0644")
    return f"{int(value, 8):04o}"


def parse_mtime(value: str | None) -> str:
    """An epoch-seconds header as ``touch -t`` wants it in UTC, "-" when absent."""
    if value is None or value == "":
        return "-"
    try:
        seconds = int(float(value))
        stamp = datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise PathError(f"X-Stackspace-Mtime: {value!r} is not epoch seconds") from exc
    if not 1970 <= stamp.year <= 9999:
        raise PathError(f"X-Stackspace-Mtime: {value!r} is out of range")
    return stamp.strftime("%Y%m%d%H%M.%S")


# --- uploaded tar streams -----------------------------------------------------------

class TarRefused(ValueError):
    """A tar member that could land outside its destination."""


def _member_path(name: str) -> str:
    if name.startswith("/"):
        raise TarRefused(f"archive member {name!r} has an absolute path")
    if any(c in name for c in "\0\n\r"):
        raise TarRefused(f"archive member {name!r} has a newline in its name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TarRefused(f"archive member {name!r} contains '..'")
    return "/".join(parts)


def _check_link_target(member: str, target: str) -> None:
    """A relative target made of leading '..' then plain names, landing inside the
    destination. (A '..' after a name could climb back through a symlink.)"""
    if not target or target.startswith("/"):
        raise TarRefused(f"archive member {member!r} is a symlink to an absolute path")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        raise TarRefused(f"archive member {member!r} is a symlink through '..' ({target!r})")
    if ups > member.count("/"):
        raise TarRefused(f"archive member {member!r} is a symlink that leaves the "
                         f"destination ({target!r})")


def check_tar(members: Iterator[tarfile.TarInfo]) -> int:
    """Refuse what could escape: absolute or '..' names, symlinks that are absolute
    or climb out, a member under a symlink the archive made, hard links to names
    not in it, devices and FIFOs. Symlinks already in the workspace are checked
    there (:data:`SCRIPT` ``untar``). Returns the number of members."""
    links: set[str] = set()
    seen: set[str] = set()
    count = 0
    for info in members:
        count += 1
        path = _member_path(info.name)
        parents = path.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            if "/".join(parents[:i]) in links:
                raise TarRefused(f"archive member {info.name!r} passes through a symlink "
                                 "of the same archive")
        if info.issym():
            _check_link_target(path, info.linkname)
            links.add(path)
        elif info.islnk():
            if _member_path(info.linkname) not in seen:
                raise TarRefused(f"archive member {info.name!r} is a hard link to a name "
                                 "not in the archive")
        elif not (info.isreg() or info.isdir()):
            raise TarRefused(f"archive member {info.name!r} is a device or FIFO")
        seen.add(path)
    return count


class TeeReader:
    """A read-only stream that hands every chunk it reads to ``sink`` too: the
    upload reaches the workspace while :func:`check_tar` reads it, in one pass.
    It pulls ``chunk`` bytes at a time whatever the reader asks for (tarfile asks
    for 10 KiB records), so the sink gets few large writes."""

    def __init__(self, source: IO[bytes], sink: Any, chunk: int = 256 * 1024) -> None:
        self.source, self.sink, self.chunk = source, sink, chunk
        self.total = 0
        self._buf = b""
        self._pos = 0

    def _fill(self) -> bool:
        data = self.source.read(self.chunk)
        if not data:
            return False
        self.total += len(data)
        self.sink(data)
        self._buf, self._pos = self._buf[self._pos:] + data, 0
        return True

    def read(self, n: int = -1) -> bytes:
        want = self.chunk if n is None or n < 0 else n
        while len(self._buf) - self._pos < want and self._fill():
            pass
        out = self._buf[self._pos:self._pos + want]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        while self._fill():
            pass
