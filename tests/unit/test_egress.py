"""The outbound allowlist's pure parts (components.egress): entries and their
errors (each naming the field), the runtime setting, the holder script's
commands (run by a real shell against recording stand-ins for iptables and
getent), readiness, and the NetworkPolicy's egress rules on both backends'
declarations."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from components.egress import (
    FIELD,
    HOLDER_IMAGE,
    HOLDER_SCRIPT,
    READY_LINE,
    EgressRule,
    holder_args,
    network_policy_egress,
    parse_allowlist,
    parse_entry,
)
from components.runtime import DockerRuntime, KubernetesRuntime, parse_runtime, runtime_dict
from components.spec import SpecError
from components.workload_start import _started, holder_ready
from stacks.config import StackConfig
from tests.unit.test_components import cfg

# --- entries ---------------------------------------------------------------


@pytest.mark.parametrize(("entry", "rule"), [
    ("git.example.com:443", EgressRule("git.example.com", 443)),
    ("git.example.com:22", EgressRule("git.example.com", 22)),
    ("Git.Example.COM.", EgressRule("git.example.com")),
    (" onedev ", EgressRule("onedev")),
    ("10.0.0.0/8", EgressRule("10.0.0.0/8")),
    ("192.0.2.7", EgressRule("192.0.2.7/32")),
    ("192.0.2.7:8080", EgressRule("192.0.2.7/32", 8080)),
    ("10.1.0.0/16:65535", EgressRule("10.1.0.0/16", 65535)),
    ("2001:db8::1", EgressRule("2001:db8::1/128")),
    ("2001:db8::/32", EgressRule("2001:db8::/32")),
    ("[2001:db8::/32]:443", EgressRule("2001:db8::/32", 443)),
    ("[2001:db8::5]", EgressRule("2001:db8::5/128")),
])
def test_entries(entry, rule):
    assert parse_entry(entry, FIELD) == rule


@pytest.mark.parametrize(("entry", "says"), [
    ("", "must be a host"),
    (443, "must be a host"),
    (None, "must be a host"),
    ("git.example.com:0", "port must be a number from 1 to 65535"),
    ("git.example.com:65536", "port must be a number"),
    ("git.example.com:https", "port must be a number"),
    ("git.example.com:", "port must be a number"),
    ("10.0.0.1/8", "host bits set past its prefix (did you mean 10.0.0.0/8?)"),
    ("bad_host", "is not a host name"),
    ("a..b", "is not a host name"),
    ("-a.example", "is not a host name"),
    ("1.2.3.4.5", "is not a host name"),
    ("10.0.0.0/33", "is not a host name"),
    ("host; rm -rf /", "is not a host name"),
    ("$(reboot)", "is not a host name"),
    ("[2001:db8::1", "[address]:port"),
    ("[2001:db8::1]443", "[address]:port"),
    ("[git.example.com]:443", "is not an IPv6 address"),
    ("https://git.example.com", "is a URL: give its host and port"),
])
def test_bad_entries_name_the_field(entry, says):
    with pytest.raises(SpecError) as e:
        parse_allowlist(["ok.example", entry])
    assert list(e.value.errors) == [f"{FIELD}[1]"]
    assert says in e.value.errors[f"{FIELD}[1]"]


def test_allowlist_shape_and_duplicates():
    assert parse_allowlist([]) == ()
    assert parse_allowlist(["a.example:22", "A.example:22", "a.example"]) == (
        EgressRule("a.example", 22), EgressRule("a.example"))
    for bad in ("git.example.com", {"host": "x"}, None):
        with pytest.raises(SpecError) as e:
            parse_allowlist(bad)
        assert list(e.value.errors) == [FIELD]
    with pytest.raises(SpecError, match="at most 64"):
        parse_allowlist([f"h{i}.example" for i in range(65)])


# --- the runtime setting -----------------------------------------------------


def test_runtime_setting_on_both_backends():
    rt = parse_runtime({"name": "d", "type": "docker", "egress_allow": ["git.example.com:443 "]})
    assert isinstance(rt, DockerRuntime) and rt.egress_allow == ("git.example.com:443",)
    assert parse_runtime(runtime_dict(rt)) == rt  # through stack config and back
    assert parse_runtime({"name": "d", "type": "docker"}).egress_allow is None
    kube = parse_runtime({"name": "k", "type": "kubernetes", "egress_allow": ["10.0.0.0/8"]})
    assert isinstance(kube, KubernetesRuntime) and kube.egress_allow == ("10.0.0.0/8",)
    with pytest.raises(SpecError) as e:
        parse_runtime({"name": "k", "type": "kubernetes", "egress_allow": ["x:99999"]})
    assert list(e.value.errors) == [f"{FIELD}[0]"]


@pytest.mark.parametrize("mode", ["host", "none", "internal"])
def test_no_allowlist_where_it_cannot_work(mode):
    with pytest.raises(SpecError) as e:
        parse_runtime({"name": "d", "type": "docker", "network_mode": mode,
                       "egress_allow": ["10.0.0.0/8"]})
    assert f"not with network_mode {mode}" in e.value.errors[FIELD]


def test_service_config_error_names_the_field(tmp_path):
    from service.config import load_config

    path = tmp_path / "stackspace.yaml"
    path.write_text("runtimes:\n  - {name: d, type: docker, egress_allow: ['git:443', 'a b']}\n")
    with pytest.raises(SpecError) as e:
        load_config(path)
    assert f"{FIELD}[1]" in e.value.errors


# --- the holder script ---------------------------------------------------------


def stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def run_holder(tmp_path: Path, args: list[str], resolv: str = "nameserver 127.0.0.11\n",
               fail: str = "") -> tuple[str, list[str]]:
    """Runs HOLDER_SCRIPT under BusyBox sh with iptables, ip6tables and getent
    replaced by recorders; returns its output and the commands they got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in ("iptables", "ip6tables"):
        stub(bin_dir / tool, f'echo "{tool} $*" >> {log}; {fail}')
    stub(bin_dir / "getent", 'case "$2" in git.example.com) '
                             'printf "192.0.2.10 STREAM git.example.com\\n192.0.2.10 DGRAM\\n'
                             '2001:db8::10 STREAM git.example.com\\n" ;; *) exit 2 ;; esac')
    resolv_file = tmp_path / "resolv.conf"
    resolv_file.write_text(resolv)
    script = HOLDER_SCRIPT.replace("/etc/resolv.conf", str(resolv_file))
    for applet in ("sh", "sed", "awk", "sort", "sleep", "cat", "timeout"):
        (bin_dir / applet).symlink_to("/bin/busybox")
    proc = subprocess.Popen(["/bin/busybox", "sh", "-c", script, "holder", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": str(bin_dir)})
    assert proc.stdout is not None
    out = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        out.append(line)
        if READY_LINE in line or not line:
            break
    proc.terminate()
    proc.communicate(timeout=10)
    return "".join(out), log.read_text().splitlines() if log.exists() else []


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="scripts/setup installs busybox")
def test_holder_script_commands(tmp_path):
    rules = parse_allowlist(["git.example.com:443", "10.0.0.0/8", "[2001:db8::/32]:22"])
    out, calls = run_holder(tmp_path, holder_args(rules),
                            resolv="nameserver 127.0.0.11\nnameserver 192.0.2.53\n")
    assert READY_LINE in out
    v4 = [c.removeprefix("iptables ") for c in calls if c.startswith("iptables ")]
    assert v4 == [
        "-P OUTPUT DROP",  # closed before anything else
        "-F OUTPUT",
        "-A OUTPUT -o lo -j ACCEPT",
        "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A OUTPUT -d 192.0.2.53 -p udp --dport 53 -j ACCEPT",
        "-A OUTPUT -d 192.0.2.53 -p tcp --dport 53 -j ACCEPT",
        "-A OUTPUT -d 192.0.2.10 -p tcp --dport 443 -j ACCEPT",
        "-A OUTPUT -d 10.0.0.0/8 -j ACCEPT",
        "-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
        "-A OUTPUT -j REJECT",
    ]
    v6 = [c for c in calls if c.startswith("ip6tables -A OUTPUT -d")]
    assert v6 == ["ip6tables -A OUTPUT -d 2001:db8::10 -p tcp --dport 443 -j ACCEPT",
                  "ip6tables -A OUTPUT -d 2001:db8::/32 -p tcp --dport 22 -j ACCEPT"]


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="scripts/setup installs busybox")
def test_holder_script_fails_closed(tmp_path):
    out, calls = run_holder(tmp_path, holder_args(parse_allowlist(["nowhere.example:443"])))
    assert READY_LINE not in out
    assert "error: cannot resolve nowhere.example (runtime.egress_allow)" in out
    assert calls[0] == "iptables -P OUTPUT DROP" and not any("REJECT" in c for c in calls)


@pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="scripts/setup installs busybox")
def test_holder_script_without_iptables_rights(tmp_path):
    out, _ = run_holder(tmp_path, [], fail="echo 'Permission denied (you must be root)' >&2; "
                                           "exit 4")
    assert "error: cannot set iptables rules: Permission denied" in out
    assert READY_LINE not in out


def test_holder_args_and_readiness():
    assert holder_args(parse_allowlist(["a.example:22", "10.0.0.0/8"])) == [
        "a.example", "22", "10.0.0.0/8", "-"]
    assert holder_ready("running", f"x\n{READY_LINE}\n") is True
    assert holder_ready("running", "") is None
    assert holder_ready("created", "") is None
    assert holder_ready("exited", f"{READY_LINE}\n") is False
    assert holder_ready("exited", "stackspace-egress: error: cannot resolve x") is False
    assert holder_ready("running", "stackspace-egress: error: cannot resolve x") is False
    assert holder_ready("restarting", "") is False
    assert _started({"State": {"StartedAt": "2026-12-05T02:49:55.123456789Z"}}).microsecond \
        == 123456
    assert _started({"State": {"StartedAt": "2026-12-05T02:49:56Z"}}) > _started(
        {"State": {"StartedAt": "2026-12-05T02:49:55.999999999Z"}})


# --- Kubernetes: the NetworkPolicy ---------------------------------------------


def test_network_policy_egress():
    rules = parse_allowlist(["git.example.com:443", "10.0.0.0/8", "2001:db8::1"])
    egress = network_policy_egress(rules, {"git.example.com": ["192.0.2.10", "2001:db8::10"]})
    assert egress[0]["ports"] == [{"protocol": "UDP", "port": 53},
                                  {"protocol": "TCP", "port": 53}]
    assert egress[0]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"}
    assert egress[1:] == [
        {"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}, {"ipBlock": {"cidr": "2001:db8::10/128"}}],
         "ports": [{"protocol": "TCP", "port": 443}]},
        {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]},
        {"to": [{"ipBlock": {"cidr": "2001:db8::1/128"}}]},
    ]


def test_declared_objects_on_both_backends():
    from stacks.program import build
    from tests.unit.pulumi_mocks import run_program

    kube = KubernetesRuntime(name="cluster", namespace="ws", egress_allow=("localhost:22",
                                                                            "10.0.0.0/8"))
    np = run_program(build, cfg(kube)).one("NetworkPolicy").plain()["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"] and np["ingress"] == []
    assert {"ipBlock": {"cidr": "127.0.0.1/32"}} in np["egress"][1]["to"]
    assert np["egress"][2] == {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}

    docker_rt = DockerRuntime(name="local", host="unix:///run/test-docker.sock",
                              egress_allow=("git.example.com:443",))
    run = run_program(build, cfg(docker_rt))
    (holder,) = [r.plain() for r in run.by_type("Container") if r.name == "network"]
    assert holder["image"] == HOLDER_IMAGE and holder["hostname"] == "app"
    assert holder["capabilities"] == {"drops": ["ALL"], "adds": ["CAP_NET_ADMIN"]}
    assert holder["entrypoints"][-2:] == ["git.example.com", "443"]
    assert holder["networkMode"] == "stackspace-isolated"
    (workspace,) = [r.plain() for r in run.by_type("Container") if r.name == "workspace"]
    assert workspace["networkMode"].startswith("container:")
    assert "hostname" not in workspace and "adds" not in workspace["capabilities"]
    stopped = run_program(build, cfg(docker_rt, running=False))
    assert [r.name for r in stopped.by_type("Container")] == ["init"]


def test_stack_config_round_trip():
    rt = DockerRuntime(name="local", egress_allow=("git.example.com:22",))
    config = cfg(rt).to_config()
    again = StackConfig.from_values(lambda k: config.get(k, (None,))[0])
    assert again.runtime == rt
