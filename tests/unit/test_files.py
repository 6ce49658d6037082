"""The file API's pure logic (service.files, service.files_cli) and its in-workspace
script, run by the host's POSIX sh (dash) and by BusyBox sh on a scratch root."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from service import files
from service.files_cli import split_target

SHELLS = [["sh"]] + ([["busybox", "sh"]] if shutil.which("busybox") else [])


@pytest.mark.parametrize("path, rel", [
    ("", ""), ("/", ""), ("a/b.txt", "a/b.txt"), ("./a//b/", "a/b"), ("a/./b", "a/b"),
    ("...", "..."), ("a..b/..c", "a..b/..c")])
def test_normalize_keeps_plain_paths(path, rel):
    assert files.normalize(path) == rel


@pytest.mark.parametrize("path", ["..", "../x", "a/../b", "a/..", "a\0b", "a\nb",
                                  "x" * 5000])
def test_normalize_refuses_dot_dot_and_control_characters(path):
    with pytest.raises(files.PathError):
        files.normalize(path)


def test_modes_and_mtimes_from_headers():
    assert files.parse_mode(None) == "-" and files.parse_mode("") == "-"
    assert files.parse_mode("755") == "0755" and files.parse_mode("04755") == "4755"
    for bad in ("rwx", "8888", "77777", "-1", "0o644"):
        with pytest.raises(files.PathError, match="X-Stackspace-Mode"):
            files.parse_mode(bad)
    assert files.parse_mtime(None) == "-"
    assert files.parse_mtime("1600000000") == "202009131226.40"
    assert files.parse_mtime("0") == "197001010000.00"
    for bad in ("soon", "1e30", "-5"):
        with pytest.raises(files.PathError, match="X-Stackspace-Mtime"):
            files.parse_mtime(bad)


def test_answers_and_listings_parse():
    ok = files.parse_answer(b"OK file 81a4 5 1600000000")
    assert ok.status == "OK" and ok.entry() == files.Entry("file", 0o100644, 5, 1600000000)
    assert ok.entry().view() == {"type": "file", "size": 5, "mode": "0644",
                                 "mtime": 1600000000}
    err = files.parse_answer(b"ERR symlink-escape d/up with space\n")
    assert (err.status, err.error, err.arg) == ("ERR", "symlink-escape", "d/up with space")
    assert files.parse_answer(b"READY .stackspace-tar.12").words == [".stackspace-tar.12"]
    with pytest.raises(ValueError, match="unexpected answer"):
        files.parse_answer(b"sh: not found")
    listing = files.parse_listing(b"a1ff 4 7 z link\x0041ed 4096 8 a dir\x0081ed 1 9 x\n y\x00")
    assert listing == [
        {"name": "a dir", "type": "dir", "size": 4096, "mode": "0755", "mtime": 8},
        {"name": "x\n y", "type": "file", "size": 1, "mode": "0755", "mtime": 9},
        {"name": "z link", "type": "symlink", "size": 4, "mode": "0777", "mtime": 7}]
    assert files.entry_type(0o010644) == "other"


def _tar(*members: tuple[str, str, str]) -> list[tarfile.TarInfo]:
    out = []
    for name, kind, link in members:
        info = tarfile.TarInfo(name)
        info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                     "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                     "dev": tarfile.CHRTYPE}[kind]
        info.linkname = link
        out.append(info)
    return out


def test_check_tar_accepts_an_ordinary_tree():
    assert files.check_tar(iter(_tar(
        ("./", "dir", ""), ("./src", "dir", ""), ("./src/a.c", "file", ""),
        ("src/lib", "sym", "../vendor/lib"), ("vendor/x", "sym", "./y"),
        ("src/a2.c", "hard", "./src/a.c"), ("top", "sym", ".")))) == 7


@pytest.mark.parametrize("members, words", [
    ([("../x", "file", "")], "contains '..'"),
    ([("a/../../x", "file", "")], "contains '..'"),
    ([("/etc/x", "file", "")], "absolute path"),
    ([("l", "sym", "/etc")], "absolute path"),
    ([("l", "sym", "")], "absolute path"),
    ([("l", "sym", "..")], "leaves the destination"),
    ([("a/b/l", "sym", "../../../x")], "leaves the destination"),
    ([("l", "sym", "a/../../x")], "through '..'"),
    ([("l", "sym", "sub"), ("l/x", "file", "")], "passes through a symlink"),
    ([("l", "sym", "sub"), ("l/deeper/x", "dir", "")], "passes through a symlink"),
    ([("h", "hard", "/etc/passwd")], "absolute path"),
    ([("h", "hard", "elsewhere")], "hard link to a name not in the archive"),
    ([("p", "fifo", "")], "device or FIFO"),
    ([("d", "dev", "")], "device or FIFO"),
    ([("a\nb", "file", "")], "newline"),
])
def test_check_tar_refuses_every_escape(members, words):
    with pytest.raises(files.TarRefused, match=words.replace("(", r"\(")):
        files.check_tar(iter(_tar(*members)))


def test_tee_reader_hands_on_what_it_reads():
    seen: list[bytes] = []
    tee = files.TeeReader(io.BytesIO(bytes(range(10))), seen.append, chunk=4)
    assert tee.read(3) == bytes([0, 1, 2]) and seen == [bytes([0, 1, 2, 3])]
    assert tee.read(3) == bytes([3, 4, 5])
    tee.drain()
    assert b"".join(seen) == bytes(range(10)) and tee.total == 10
    assert tee.read(100) == bytes(range(6, 10)) and tee.read(1) == b""


@pytest.mark.parametrize("arg, target", [
    ("dev:src/a.c", ("dev", "src/a.c")), ("dev:", ("dev", "")), ("dev:/abs", ("dev", "/abs")),
    ("./dev:x", (None, "./dev:x")), ("/tmp/a:b", (None, "/tmp/a:b")),
    ("Bad:x", (None, "Bad:x")), ("file.txt", (None, "file.txt"))])
def test_cp_targets(arg, target):
    assert split_target(arg) == target


# --- the script itself, on a real shell and filesystem ------------------------------

@pytest.fixture(params=SHELLS, ids=lambda s: s[0])
def sh(request, tmp_path):
    root = tmp_path / "root"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"hello")
    (tmp_path / "outside").mkdir()
    links = {"abs": "/etc", "up": "../outside", "d/climb": "../../outside",
             "d/ok": "a.txt", "d/subl": "sub", "final": "../outside/f"}
    for link, target in links.items():
        os.symlink(target, root / link)

    def run(op: str, rel: str, *args: str, data: bytes = b"") -> tuple[int, bytes]:
        p = subprocess.run([*request.param, "-c", files.BOOTSTRAP, "sh", op, str(root), rel,
                            *args], input=files.PRELUDE + data, capture_output=True,
                           timeout=30, check=False)
        return p.returncode, p.stdout

    run.root = root  # type: ignore[attr-defined]
    run.outside = tmp_path / "outside"  # type: ignore[attr-defined]
    return run


def test_script_reads_lists_and_stats(sh):
    code, out = sh("get", "d/a.txt", "list")
    assert code == 0 and out.startswith(b"OK file 81") and out.endswith(b"\nhello")
    code, out = sh("get", "d/ok", "list")  # a symlink inside the root is followed
    assert code == 0 and out.endswith(b"\nhello")
    code, out = sh("get", "d", "list")
    names = [r.split(b" ", 3)[3] for r in out.split(b"\n", 1)[1].split(b"\0") if r]
    assert code == 0 and sorted(names) == [b"a.txt", b"climb", b"ok", b"sub", b"subl"]
    code, out = sh("stat", "d/subl")
    assert code == 0 and out.startswith(b"OK dir ")
    assert sh("get", "nope/x", "list") == (3, b"ERR not-found nope\n")


@pytest.mark.parametrize("op, rel, answer", [
    ("get", "abs/passwd", b"ERR symlink-absolute abs\n"),
    ("get", "abs", b"ERR symlink-absolute abs\n"),
    ("get", "up/x", b"ERR symlink-escape up\n"),
    ("get", "d/climb", b"ERR symlink-escape d/climb\n"),
    # GNU readlink -f resolves a dangling link whose folder exists, BusyBox's does not
    ("stat", "final", (b"ERR symlink-escape final\n", b"ERR symlink-dangling final\n")),
    ("put", "up/new", b"ERR symlink-escape up\n"),
    ("put", "d/climb/new/deeper", b"ERR symlink-escape d/climb\n"),
    ("put", "abs", b"ERR symlink-absolute abs\n"),
    ("tarin", "up", b"ERR symlink-escape up\n"),
])
def test_script_refuses_escapes_before_reading_anything(sh, op, rel, answer):
    args = {"get": (), "stat": (), "put": ("-", "-", "-"), "tarin": ("-",)}[op]
    code, out = sh(op, rel, *args, data=b"payload")
    assert code == 3 and out in (answer if isinstance(answer, tuple) else (answer,))
    assert os.listdir(sh.outside) == []
    assert not [n for n in os.listdir(sh.root) if n.startswith(".stackspace-")]


def test_script_writes_atomically_with_mode_and_mtime(sh):
    code, out = sh("put", "new/deep/f.bin", "0600", "202009131226.40", "4", data=b"\0\1\2\3")
    assert code == 0 and out.startswith(b"READY .stackspace-put.")
    assert out.endswith(b"\nOK file 8180 4 1600000000\n")
    f = sh.root / "new" / "deep" / "f.bin"
    assert f.read_bytes() == b"\0\1\2\3" and f.stat().st_mode & 0o777 == 0o600
    code, out = sh("put", "new2/f.bin", "-", "-", "9", data=b"short")
    assert code == 3 and out.endswith(b"\nERR short 5\n")
    assert not (sh.root / "new2").exists()  # nothing, not even the folder
    assert not [n for n in os.listdir(sh.root) if n.startswith(".stackspace-")]
    assert sh("put", "d", "-", "-", "-") == (3, b"ERR is-dir d\n")


def test_script_abort_removes_only_an_upload(sh):
    (sh.root / ".stackspace-put.42").write_bytes(b"half")
    (sh.root / "keep").write_bytes(b"mine")
    assert sh("abort", ".", ".stackspace-put.42") == (0, b"OK\n")
    assert sh("abort", ".", "keep") == (0, b"OK\n")
    assert sorted(os.listdir(sh.root)) == ["abs", "d", "final", "keep", "up"]


def test_script_unpacks_only_through_real_folders(sh):
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w") as tar:
        info = tarfile.TarInfo("subl/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    code, out = sh("tarin", "d", str(len(body.getvalue())), data=body.getvalue())
    assert code == 0 and out.startswith(b"READY .stackspace-tar.")
    tmp = out.split()[-1].decode()
    assert sh("untar", "d", tmp, "extract") == (3, b"ERR symlink-parent d/subl\n")
    assert os.listdir(sh.root / "d" / "sub") == [] and not (sh.root / tmp).exists()
    code, out = sh("tarin", "d/t", str(len(body.getvalue())), data=body.getvalue())
    tmp = out.split()[-1].decode()
    assert sh("untar", "d/t", tmp, "extract") == (0, b"OK\n")
    assert (sh.root / "d" / "t" / "subl" / "x").read_bytes() == b"x"
    assert not Path(sh.root / tmp).exists()
