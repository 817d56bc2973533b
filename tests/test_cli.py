"""The `router` command: serve settings, send, listen, --version, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from router import config
from router.client import Endpoint, Sender
from conftest import ROOT, RouterProcess

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "router", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def test_version_names_every_component():
    out = run_cli("--version").stdout
    for part in ("router 0.1.0", "pyzmq", "libzmq", "Cython", "native core"):
        assert part in out


def test_send_and_listen(router):
    listener = subprocess.Popen(
        [sys.executable, "-m", "router", "listen", "merchant:5", "--router", router.url,
         "--count", "1", "--timeout", "10"], stdout=subprocess.PIPE, text=True, env=ENV)
    time.sleep(0.8)
    sent = run_cli("send", "merchant:5", '{"order": 7}', "--router", router.url,
                   "--kind", "order.created", "--wait", "delivered")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip().endswith("DELIVERED")
    out, _ = listener.communicate(timeout=10)
    assert 'merchant:5 seq=1 kind=order.created from=cli {"order": 7}' in out


def test_send_reports_refusal(router):
    out = run_cli("send", "order:nope", "x", "--channel", "--router", router.url)
    assert out.returncode == 1
    assert "REFUSED UNKNOWN_CHANNEL" in out.stdout


def test_send_without_router_says_so():
    out = run_cli("send", "user:1", "x", "--router", "tcp://127.0.0.1:1", "--timeout", "0.5")
    assert out.returncode != 0 and "router serve" in out.stderr


def test_settings_from_toml_env_and_flags(tmp_path):
    toml = tmp_path / "router.toml"
    toml.write_text('bind = ["tcp://127.0.0.1:7001"]\nwindow = 64\nmax_payload = 2048\n')
    s = config.load(toml, env={"ROUTER_WINDOW": "128"}, overrides={"max_payload": 4096})
    assert (s.bind, s.window, s.max_payload) == (["tcp://127.0.0.1:7001"], 128, 4096)
    assert config.load(None, env={"ROUTER_BIND": "tcp://a:1, ipc:///tmp/x"}).bind == [
        "tcp://a:1", "ipc:///tmp/x"]
    toml.write_text("windw = 3\n")
    with pytest.raises(ValueError, match="unknown settings"):
        config.load(toml, env={})
    with pytest.raises(ValueError, match="window must be a positive"):
        config.load(None, env={"ROUTER_WINDOW": "0"})


def test_serve_rejects_bad_setting_clearly():
    out = run_cli("serve", "--window", "0")
    assert out.returncode == 2 and "window must be a positive integer" in out.stderr


def test_serve_reports_busy_port(router):
    out = run_cli("serve", "--bind", router.url)
    assert out.returncode == 1 and "cannot bind" in out.stderr


def test_env_settings_reach_the_router():
    r = RouterProcess(env={"ROUTER_MAX_PAYLOAD": "3000"}).start()
    try:
        with Sender(r.url, "svc") as s:
            assert s.session.welcome.max_payload == 3000
    finally:
        r.stop()


def test_sigterm_stops_cleanly_with_summary_and_quiet_log(router):
    with Endpoint(router.url, ["user:1"]) as u, Sender(router.url, "svc") as s:
        for i in range(300):
            s.send("user:1", b"x")
        for _ in range(300):
            u.ack(u.recv(timeout=5))
        u.flush()
    time.sleep(1.2)  # the BYEs land, and at least one periodic summary is written
    assert router.stop(signal.SIGTERM) == 0
    log = router.log()
    assert "peer connected: svc (sender" in log and "peer disconnected: user:1" in log, log
    assert "summary:" in log and "final:" in log and "received SIGTERM" in log
    assert len(log.splitlines()) < 40  # never a line per message


def test_sigint_stops_cleanly(router):
    assert router.stop(signal.SIGINT) == 0
