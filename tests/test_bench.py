"""`router bench` against a real router: every mode runs briefly and its figures add up;
a user's mistake is one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from support import ROOT, curve_router, free_port

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def bench(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "router", "bench", *args],
                          capture_output=True, text=True, env=ENV, timeout=timeout)


def check_figures(s: dict, publishers: int, receivers: int) -> None:
    assert s["publishers"] == publishers and s["receivers"] == receivers
    assert s["sent"] > 0
    assert s["delivered"] == s["sent"], s          # every message delivered (or answered)
    assert s["lost"] == 0 and s["errors"] == 0 and s["reordered"] == 0
    assert s["msg_s"] > 0 and s["span_s"] > 0
    assert s["mb_s"] == pytest.approx(s["msg_s"] * s["size"] / 1e6)
    assert 0 < s["sender_cpu_us"] < 100_000 and 0 < s["receiver_cpu_us"] < 100_000
    assert 0 < s["p50_us"] <= s["p99_us"] <= s["p999_us"] <= s["max_us"] < 30e6


@pytest.mark.parametrize("mode,api,clients", [
    ("pub", "blocking", (2, 2)),
    ("reliable", "blocking", (1, 2)),
    ("request", "blocking", (2, 1)),
    ("pub", "asyncio", (1, 1)),
    ("reliable", "asyncio", (1, 1)),
])
def test_each_mode_delivers_everything_it_reports(router, mode, api, clients):
    pubs, recvs = clients
    out = bench(mode, "--url", router.url, "--duration", "1", "--rate", "2000", "--json",
                "--api", api, "--publishers", str(pubs), "--receivers", str(recvs),
                "--size", "100")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["mode"] == mode and s["api"] == api and s["size"] == 100
    check_figures(s, pubs, recvs)
    assert 1000 <= s["sent"] <= 2600  # about 1 s at 2,000 msg/s
    if mode == "reliable":
        assert s["receipts"]["DELIVERED"] == s["sent"] and s["unconfirmed"] == 0
    if mode == "request":
        assert s["unanswered"] == 0 and not s["failed"]
    assert re.search(r"\[\s*\d+\.\ds\] sent [\d,]+ \([\d,]+/s\)", out.stderr), out.stderr


def test_the_table_counts_match(router):
    out = bench("pub", "--url", router.url, "--count", "3000", "--receivers", "3")
    assert out.returncode == 0, out.stderr
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1)
                for line in out.stdout.splitlines() if line.strip())
    for label in ("delivered msg/s", "delivered MB/s", "sender CPU us/msg",
                  "receiver CPU us/msg", "latency p50 us", "latency p99 us",
                  "latency p99.9 us"):
        assert re.fullmatch(r"[\d,.]+", rows[label]), (label, out.stdout)
    assert rows["sent"] == rows["delivered"] == "3,000"
    assert rows["lost"] == "0"
    assert rows["clients"] == "1 publisher(s) -> 3 receiver(s)"


def test_sub_mode_receives_what_a_separate_pub_run_sends(router):
    sub = subprocess.Popen([sys.executable, "-m", "router", "bench", "sub", "--url",
                            router.url, "--tag", "t1", "--count", "500", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        # the receiver binds its address before anything is sent: reliable messages wait
        # for it at the router anyway
        pub = bench("reliable", "--url", router.url, "--tag", "t1", "--receivers", "0",
                    "--count", "500", "--json")
    except BaseException:
        sub.kill()
        raise
    out, err = sub.communicate(timeout=60)
    assert sub.returncode == 0, err
    assert json.loads(out)["delivered"] == 500
    assert pub.returncode == 0, pub.stderr
    s = json.loads(pub.stdout)
    assert s["sent"] == 500 and s["receipts"]["DELIVERED"] == 500


@pytest.mark.parametrize("args,needles", [
    (["pub", "--rate", "fast"], ["--rate", "expected an integer", "router bench --help"]),
    (["pub", "--size", "8"], ["--size", "must be 16.."]),
    (["pub", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["flood"], ["invalid choice: 'flood'"]),
    (["request", "--receivers", "0"], ["request mode needs --receivers 1 or more"]),
    (["reliable", "--receivers", "0"], ["--receivers 0 sends to bench:<tag>.0"]),
    (["sub"], ["sub mode needs --tag"]),
    (["pub", "--url", "localhost:5555"], ["no scheme"]),
])
def test_a_wrong_flag_is_one_line_and_exit_2(args, needles):
    out = bench(*args, timeout=20)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_no_router_is_one_line():
    out = bench("pub", "--url", f"tcp://127.0.0.1:{free_port()}", "--timeout", "0.5",
                timeout=20)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "no WELCOME" in out.stderr, out.stderr


def test_help_documents_every_mode_and_option():
    out = bench("--help", timeout=20)
    assert out.returncode == 0
    for word in ("pub", "reliable", "request", "sub", "--url", "--size", "--count",
                 "--duration", "--rate", "--publishers", "--receivers", "--window", "--api"):
        assert word in out.stdout, word


def test_ctrl_c_stops_the_clients_and_still_prints_the_figures(router):
    # sub mode runs until told: Ctrl-C (SIGINT to the whole group, as a terminal sends)
    sub = subprocess.Popen([sys.executable, "-m", "router", "bench", "sub", "--url",
                            router.url, "--tag", "t2", "--count", "1000000", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                           start_new_session=True)
    try:
        pub = bench("reliable", "--url", router.url, "--tag", "t2", "--receivers", "0",
                    "--count", "300", "--json")
        assert pub.returncode == 0, pub.stderr
        os.killpg(sub.pid, signal.SIGINT)
        out, err = sub.communicate(timeout=30)
    finally:
        if sub.poll() is None:
            os.killpg(sub.pid, signal.SIGKILL)
    assert sub.returncode == 130, err
    s = json.loads(out)
    assert s["interrupted"] and s["delivered"] == 300 and s["p50_us"] > 0
    assert "interrupted: stopping the clients" in err


BENCH_CREDENTIALS = """
[[principal]]
name = "bench"
public_keys = ["{keys}/bench.key"]
roles = ["sender", "endpoint"]
names = ["bench-*"]
bind = ["bench:*"]
send = ["bench:*"]
"""


@pytest.fixture
def secure_router(tmp_path, make_router):
    """A router with credentials and CURVE, and the key flags its bench clients take."""
    keys = tmp_path / "certs"
    r, options = curve_router(make_router, keys, ["bench"], BENCH_CREDENTIALS.format(keys=keys))
    o = options("bench")
    return r, ["--server-key", o["server_key"], "--key", o["key"]]


@pytest.mark.parametrize("mode,api", [("pub", "blocking"), ("reliable", "asyncio")])
def test_an_authenticated_router_is_benched_with_a_key(secure_router, mode, api):
    r, key_flags = secure_router
    out = bench(mode, "--url", r.url, "--count", "3000", "--json", "--api", api,
                *key_flags)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    check_figures(s, 1, 1)
    assert s["sent"] == 3000
    assert "CURVE on every endpoint" in r.log() and "FORBIDDEN" not in r.log()


def test_benching_an_authenticated_router_without_a_whole_key_is_one_line(secure_router):
    r, key_flags = secure_router
    out = bench("pub", "--url", r.url, *key_flags[:2], timeout=20)
    assert out.returncode == 2 and "--key" in out.stderr, out
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    out = bench("pub", "--url", r.url, "--timeout", "1", timeout=30)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out
    assert out.stderr.strip().count("\n") == 0, out.stderr
