"""Settings: documentation from config.py's comments, errors that name their source,
the commented TOML of `router config`, and the one endpoint check."""

from __future__ import annotations

from dataclasses import fields

import pytest

from router import config
from router.config import Settings, check_endpoint


def test_every_setting_has_its_documentation():
    docs = config.field_docs()
    missing = [f.name for f in fields(Settings) if not docs.get(f.name)]
    assert not missing, f"settings without a #: comment in config.py: {missing}"
    assert docs["window"] == "Reliable deliveries in flight (sent, not acked) per address."
    # a comment over several lines is one description
    assert docs["max_queued_per_sender"].endswith("cannot take the whole queue from the others.")


def test_invalid_toml_names_the_file(tmp_path):
    bad = tmp_path / "router.toml"
    bad.write_text("window = = 3\n")
    with pytest.raises(ValueError, match=f"config file {bad} is not valid TOML"):
        config.load(bad, env={})
    with pytest.raises(ValueError, match=f"cannot read config file {tmp_path / 'nope.toml'}"):
        config.load(tmp_path / "nope.toml", env={})
    bad.write_text('window = "many"\n')
    with pytest.raises(ValueError, match=f"{bad}: window: expected an integer"):
        config.load(bad, env={})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ValueError, match="ROUTER_WINDOW: expected an integer, got 'abc'"):
        config.load(None, env={"ROUTER_WINDOW": "abc"})
    with pytest.raises(ValueError, match="ROUTER_FSYNC: expected true/false"):
        config.load(None, env={"ROUTER_FSYNC": "maybe"})


def test_to_toml_loads_back_to_the_same_settings(tmp_path):
    for settings in (Settings(), config.load(None, env={
            "ROUTER_BIND": "tcp://127.0.0.1:7001,ipc:///tmp/r.sock", "ROUTER_FSYNC": "off",
            "ROUTER_DEDUP_SECONDS": "30", "ROUTER_LOG_LEVEL": "debug",
            "ROUTER_DATA_DIR": 'dir with "quotes" and \\ backslash'})):
        path = tmp_path / "router.toml"
        path.write_text(config.to_toml(settings))
        assert config.load(path, env={}) == settings


def test_to_toml_documents_each_key_and_marks_changed_defaults():
    text = config.to_toml(Settings(window=64))
    lines = text.splitlines()
    i = lines.index("window = 64")
    assert lines[i - 2] == "# Reliable deliveries in flight (sent, not acked) per address."
    assert lines[i - 1] == "# (default 1024)"
    assert "max_payload = 1048576" in lines
    assert all(len(line) <= 90 for line in lines)


@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555", "ipc:///tmp/r.sock",
    "tcp://router.internal:65535"])
def test_check_endpoint_accepts(endpoint):
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint,bind,message", [
    ("localhost:17301", False, "no scheme.*did you mean tcp://localhost:17301"),
    ("tcp://127.0.0.1", False, "needs a host and a port"),
    ("tcp://127.0.0.1:", False, "needs a host and a port"),
    ("tcp://:5555", False, "needs a host and a port"),
    ("tcp://127.0.0.1:99999", False, "outside 1..65535"),
    ("tcp://*:5555", False, "connect to a real host"),
    ("udp://127.0.0.1:5555", False, "not supported"),
    ("ipc://", False, "no path"),
    ("localhost:1", True, "no scheme"),
    ("tcp://127.0.0.1:abc", True, "needs a host and a port"),
])
def test_check_endpoint_refuses_with_what_to_write(endpoint, bind, message):
    with pytest.raises(ValueError, match=message):
        check_endpoint(endpoint, bind=bind)


def test_bind_may_take_any_interface_and_port():
    assert check_endpoint("tcp://*:*", bind=True) and check_endpoint("tcp://0.0.0.0:0", bind=True)
    with pytest.raises(ValueError, match="bind.*no scheme"):
        config.load(None, env={"ROUTER_BIND": "localhost:1"})
