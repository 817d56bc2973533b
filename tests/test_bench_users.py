"""The users' benchmark (`python -m benchmarks sdk`) end to end, briefly (marked long,
about twenty seconds): every contender delivers everything it sends, and the report has
the ratios; skipped, saying what to install, without nats-server, redis-server or the
clients. And, quick: the setup check's message, the interleaved plan, and sdk-curve
(the router with credentials and CURVE) against sdk, which need neither server."""

from __future__ import annotations

import glob
import os
import sys

import pytest

from support import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.sdk import command  # noqa: E402
from benchmarks.sdk.options import SdkOptions  # noqa: E402
from benchmarks.sdk.report import markdown  # noqa: E402
from benchmarks.sdk import servers  # noqa: E402
from benchmarks.sdk.servers import CONTENDERS  # noqa: E402


def test_setup_says_exactly_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(servers, "program", lambda name: None)
    assert servers.missing(["sdk", "nats", "redis"]) == ["nats-server", "redis-server"]
    assert servers.missing(["sdk", "redis"]) == ["redis-server"]
    assert servers.missing(["sdk", "sdk-asyncio"]) == []
    assert command.main(["-c", "sdk,jetstream", "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert err == ("benchmarks sdk: nats-server not installed: sudo apt-get install "
                   "nats-server (the Python clients: pip install -e '.[bench]')\n")


def test_plan_interleaves_the_contenders_round_by_round():
    opts = SdkOptions(contenders=("sdk", "nats"), rates=(5000,), repeat=2)
    assert command.plan(opts) == [("sdk", 0.0), ("nats", 0.0), ("sdk", 5000.0),
                                  ("nats", 5000.0)] * 2


def _run_or_skip(opts: SdkOptions) -> list[dict]:
    """The benchmark's rows, or a skip naming what this machine lacks for it."""
    try:
        command.check_setup(opts)
    except command.SetupError as exc:
        pytest.skip(str(exc))
    return command.run(opts)


@pytest.mark.long
@pytest.mark.timeout(900)
def test_every_contender_delivers_and_the_report_has_the_ratios():
    opts = SdkOptions(count=20_000, rates=(5000,), duration=1.0, repeat=1, idle=2.0,
                      verbose=False)
    rows = _run_or_skip(opts)
    assert [(r["contender"], r["rate"]) for r in rows] == [
        (c, rate) for rate in (0.0, 5000.0) for c in CONTENDERS]
    for r in rows:
        assert "error" not in r, r["error"]
        assert r["sent"] == r["count"] and r["delivered"] == r["sent"], r
        assert r["msg_s"] > 0 and r["sender_cpu_us"] > 0 and r["receiver_cpu_us"] > 0
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"]
    env = command.env_record()
    report = markdown(rows, opts, env)
    for ratio in ("SDK best effort / nats core", "SDK best effort / redis",
                  "SDK reliable / JetStream", "asyncio / blocking", "sdk-curve / sdk"):
        assert ratio in report
    assert env["nats-server"] not in ("-", "?") and env["redis-server"] not in ("-", "?")


@pytest.mark.timeout(300)
def test_sdk_curve_delivers_everything_through_curve(tmp_path):
    """sdk-curve's trials, tiny: every message delivered, no ERROR on either client, the
    router ran CURVE with one principal per client; the report has its ratio to sdk."""
    opts = SdkOptions(contenders=("sdk", "sdk-curve"), count=2000, rates=(2000,),
                      duration=0.5, repeat=1, idle=1.0, verbose=False, keep=True,
                      workdir=str(tmp_path))
    rows = _run_or_skip(opts)
    assert [(r["contender"], r["rate"]) for r in rows] == [
        ("sdk", 0.0), ("sdk-curve", 0.0), ("sdk", 2000.0), ("sdk-curve", 2000.0)]
    for r in rows:
        assert "error" not in r, r["error"]
        assert r["sent"] == r["count"] and r["delivered"] == r["sent"], r
        assert r["publisher_result"]["errors"] == 0 and r["receiver_result"]["errors"] == 0
    for r in rows[1::2]:
        with open(os.path.join(r["workdir"], "router-curve.log")) as fh:
            log = fh.read()
        assert "2 principals, 2 keys; CURVE on every endpoint" in log, log
        assert log.count("peer connected: bench-") == 2 and "FORBIDDEN" not in log, log
    assert len(glob.glob(f"{rows[1]['workdir']}/certs/*.key_secret")) == 3
    report = markdown(rows, opts, command.env_record())
    assert "sdk-curve / sdk, CURVE / open router (delivered msg/s): **" in report
