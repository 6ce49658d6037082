"""Real private servers on loopback for the e2e tests, started from Debian
packages and stopped at the end of the module that uses them:

- a Docker registry (`docker-registry`, distribution) behind htpasswd auth;
- a git server over HTTPS (`git http-backend` as CGI under `lighttpd`, TLS
  with a throw-away CA) that admits exactly one user name, as GitLab OAuth
  ('oauth2') or OneDev (the account name) do.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import unavailable


@dataclass(frozen=True)
class Registry:
    address: str  # host:port
    username: str
    password: str


@dataclass(frozen=True)
class GitServer:
    base_url: str  # https://127.0.0.1:PORT/git
    ca_pem: Path
    username: str
    password: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        unavailable(f"missing {', '.join(missing)} (scripts/setup installs docker-registry, "
                    "apache2-utils, lighttpd, lighttpd-mod-openssl, openssl)")


def _htpasswd(path: Path, user: str, password: str) -> None:
    # bcrypt: the only format the registry accepts; lighttpd reads it too.
    line = subprocess.run(["htpasswd", "-nbB", user, password], check=True,
                          capture_output=True, text=True).stdout.strip()
    path.write_text(line + "\n")


def _wait_answering(url: str, proc: subprocess.Popen, log: Path,
                    context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2, context=context)  # noqa: S310 - loopback
            return
        except urllib.error.HTTPError:
            return  # 401: up, and asking for credentials
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url}: no answer: {log.read_text()[-2000:]}")


@contextmanager
def _running(cmd: list[str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def private_registry(tmp: Path, username: str, password: str) -> Iterator[Registry]:
    _need("docker-registry", "htpasswd")
    port = _free_port()
    _htpasswd(tmp / "htpasswd", username, password)
    (tmp / "data").mkdir()
    config = tmp / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"auth:\n  htpasswd:\n    realm: stackspace-test\n    path: {tmp / 'htpasswd'}\n")
    with _running(["docker-registry", "serve", str(config)], tmp / "registry.log") as proc:
        _wait_answering(f"http://127.0.0.1:{port}/v2/", proc, tmp / "registry.log")
        yield Registry(f"127.0.0.1:{port}", username, password)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """The server's key and certificate in `tmp`: made once, then kept (a
    server restarted from the same dir is trusted as before)."""
    key, cert = tmp / "server.key", tmp / "server.pem"
    if key.exists() and cert.exists():
        return key, cert
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


@contextmanager
def git_https_server(tmp: Path, repos: Path, username: str,
                     password: str, port: int | None = None) -> Iterator[GitServer]:
    """Serve the bare repositories under `repos` at https://127.0.0.1:PORT/git/<name>.git,
    to `username` only. The same `tmp` and `port` again: the same server back."""
    _need("lighttpd", "htpasswd", "openssl", "git")
    backend = Path(subprocess.run(["git", "--exec-path"], check=True, capture_output=True,
                                  text=True).stdout.strip()) / "git-http-backend"
    port = port or _free_port()
    key, cert = _self_signed(tmp)
    pem = tmp / "server-bundle.pem"
    pem.write_text(cert.read_text() + key.read_text())
    _htpasswd(tmp / "htpasswd", username, password)
    (tmp / "docroot").mkdir(exist_ok=True)
    conf = tmp / "lighttpd.conf"
    conf.write_text(f"""
server.modules = ("mod_alias", "mod_auth", "mod_authn_file", "mod_cgi", "mod_setenv",
                  "mod_openssl")
server.document-root = "{tmp / 'docroot'}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{tmp / 'lighttpd-error.log'}"
ssl.engine = "enable"
ssl.pemfile = "{pem}"
alias.url = ("/git" => "{backend}")
$HTTP["url"] =~ "^/git" {{
  cgi.assign = ("" => "")
  setenv.add-environment = ("GIT_PROJECT_ROOT" => "{repos}", "GIT_HTTP_EXPORT_ALL" => "1")
  auth.backend = "htpasswd"
  auth.backend.htpasswd.userfile = "{tmp / 'htpasswd'}"
  auth.require = ("" => ("method" => "basic", "realm" => "git",
                         "require" => "user={username}"))
}}
""")
    context = ssl.create_default_context(cafile=str(cert))
    with _running(["lighttpd", "-D", "-f", str(conf)], tmp / "lighttpd.log") as proc:
        _wait_answering(f"https://127.0.0.1:{port}/git/", proc, tmp / "lighttpd.log", context)
        yield GitServer(f"https://127.0.0.1:{port}/git", cert, username, password)
