"""The proxy URL the service hands out with a ticket: the listen address by
default, the public one (a Service, an ingress) when configured."""

from __future__ import annotations

from service.config import load_config


def test_the_ticket_url_is_the_listen_address_unless_a_public_one_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("STACKSPACE_PROXY_URL", raising=False)
    assert load_config(data_dir=tmp_path, proxy_listen="127.0.0.1:9001").proxy_url == \
        "ws://127.0.0.1:9001/exec"
    config = tmp_path / "config.yaml"
    config.write_text("proxy_url: wss://terminals.example/exec\n")
    assert load_config(config, data_dir=tmp_path).proxy_url == "wss://terminals.example/exec"
    monkeypatch.setenv("STACKSPACE_PROXY_URL", "ws://10.0.0.5:8081/exec")
    assert load_config(config, data_dir=tmp_path).proxy_url == "ws://10.0.0.5:8081/exec"


def test_the_service_reaches_the_proxy_at_its_internal_url_when_one_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("STACKSPACE_PROXY_URL", raising=False)
    monkeypatch.delenv("STACKSPACE_PROXY_INTERNAL_URL", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text("proxy_url: wss://terminals.example/exec\n")
    assert load_config(config, data_dir=tmp_path).proxy_internal_url == \
        "wss://terminals.example/exec"
    config.write_text("proxy_url: wss://terminals.example/exec\n"
                      "proxy_internal_url: ws://stackspace-proxy.ns.svc:8081/exec\n")
    assert load_config(config, data_dir=tmp_path).proxy_internal_url == \
        "ws://stackspace-proxy.ns.svc:8081/exec"
    monkeypatch.setenv("STACKSPACE_PROXY_INTERNAL_URL", "ws://10.0.0.6:8081/exec")
    assert load_config(config, data_dir=tmp_path).proxy_internal_url == "ws://10.0.0.6:8081/exec"

