"""The `router` command: serve settings, send, listen, --version, clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from router import config
from router.client import Endpoint, Sender
from conftest import ROOT, RouterProcess, free_port

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
    assert config.load(None, env={"ROUTER_BIND": "tcp://a:1, ipc:///tmp/x",
                                  "ROUTER_INSECURE": "true"}).bind == [
        "tcp://a:1", "ipc:///tmp/x"]
    toml.write_text("windw = 3\n")
    with pytest.raises(ValueError, match="unknown settings"):
        config.load(toml, env={})
    with pytest.raises(ValueError, match="window must be a positive"):
        config.load(None, env={"ROUTER_WINDOW": "0"})


def test_open_routers_stay_on_loopback_unless_insecure(tmp_path):
    """No credentials: loopback and ipc only; any other interface needs --insecure; and
    the error says what to do."""
    out = run_cli("serve", "--bind", "tcp://0.0.0.0:5999", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--insecure" in out.stderr and "--credentials" in out.stderr
    assert config.load(None, env={}, overrides={"bind": ["tcp://[::1]:5", "ipc:///x",
                                                        "tcp://localhost:6"]})
    with pytest.raises(ValueError, match="go together"):
        config.load(None, env={}, overrides={"credentials": "c.toml"})
    with pytest.raises(ValueError, match="passwords unencrypted"):
        config.load(None, env={}, overrides={"credentials": "c.toml", "mechanism": "plain",
                                             "bind": ["tcp://10.0.0.1:5"]})


def test_keygen_and_tokens_from_the_command_line(tmp_path):
    out = run_cli("keygen", "router", "--dir", str(tmp_path / "certs"))
    assert out.returncode == 0, out.stderr
    secret = tmp_path / "certs" / "router.key_secret"
    assert secret.exists() and (secret.stat().st_mode & 0o777) == 0o600
    assert len(out.stdout.strip().splitlines()[-1]) == 40  # the Z85 public key
    again = run_cli("keygen", "router", "--dir", str(tmp_path / "certs"))
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    key = run_cli("token", "secret").stdout.strip()
    creds = tmp_path / "credentials.toml"
    creds.write_text(f'[tokens]\nkeys = [{{id = "k1", secret = "{key}"}}]\n')
    token = run_cli("token", "issue", "user:7", "--ttl", "1h", "--credentials", str(creds))
    assert token.returncode == 0, token.stderr
    checked = run_cli("token", "verify", token.stdout.strip(), "--credentials", str(creds))
    assert checked.returncode == 0 and '"sub": "user:7"' in checked.stdout
    forged = token.stdout.strip()[:-4] + ("AAAA" if not token.stdout.strip().endswith("AAAA")
                                          else "BBBB")
    bad = run_cli("token", "verify", forged, "--credentials", str(creds))
    assert bad.returncode == 1 and "bad_signature" in bad.stderr
    missing = run_cli("token", "issue", "user:7", "--credentials", str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    assert run_cli("token", "issue", "user:7", "--ttl", "soon",
                   "--credentials", str(creds)).returncode == 2



def test_keygen_and_token_mistakes_are_one_line(tmp_path):
    creds = tmp_path / "credentials.toml"
    creds.write_text(f'[tokens]\nkeys = [{{id = "k1", secret = "{"s" * 40}"}}]\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("[tokens]\nkeys = 5\n")
    (tmp_path / "afile").write_text("")
    cases = [
        (("token", "issue", "user:7", "--ttl", "inf", "--credentials", str(creds)), "finite"),
        (("token", "issue", "user:7", "--ttl", "nan", "--credentials", str(creds)), "finite"),
        (("token", "issue", "user 7", "--credentials", str(creds)), "not valid"),
        (("token", "issue", "user:7", "--credentials", str(broken)), "keys is a list"),
        (("token", "verify", "x.y.z"), "--credentials"),
        (("keygen", "router", "--dir", str(tmp_path / "afile")), "cannot write keys"),
        (("keygen", "../router", "--dir", str(tmp_path)), "plain file name"),
    ]
    for argv, needle in cases:
        out = run_cli(*argv)
        assert out.returncode == 2, (argv, out.returncode, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr, (argv, out.stderr)


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
            assert s.welcome.max_payload == 3000
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


# ---- a user's mistakes: one line, what to do, non-zero exit, never a traceback ---------

def assert_clean_failure(out: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with a one-line message on stderr naming the problem."""
    both = out.stdout + out.stderr
    assert out.returncode != 0, both
    assert "Traceback" not in both, both
    last = out.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, f"{needle!r} not in the message {last!r}"
    return last


@pytest.mark.parametrize("args,needles", [
    (["send", "user:1", "x", "--router", "localhost:17301"],
     ["no scheme", "did you mean tcp://localhost:17301"]),
    (["send", "user:1", "x", "--router", "tcp://127.0.0.1"], ["needs a host and a port"]),
    (["listen", "user:1", "--router", "tcp://127.0.0.1"], ["needs a host and a port"]),
    (["send", "", "x"], ["target", "0 bytes", "<kind>:<id>"]),
    (["send", "user:" + "x" * 295, "x"], ["target", "300 bytes", "1..255"]),
    (["send", "merchant", "x"], ["target 'merchant' is not valid", "<kind>:<id>"]),
    (["send", ":881", "x"], ["':881' is not valid"]),
    (["send", "order 1", "x", "--channel"], ["channel 'order 1'"]),
    (["send", "user:1", "x", "--ttl-ms", "-5"], ["--ttl-ms: must be 0..4294967295 ms, got -5"]),
    (["send", "user:1", "x", "--order", "10 02"], ["order 'order:10 02'"]),
    (["listen", "bad addr"], ["address 'bad addr' is not valid"]),
    (["listen", "merchant:"], ["address 'merchant:' is not valid"]),
    (["join", "order:1", "user"], ["address 'user' is not valid"]),
    (["serve", "--bind", "localhost:1"], ["bind:", "no scheme", "tcp://localhost:1"]),
    (["serve", "--bind", "tcp://127.0.0.1"], ["needs a host and a port"]),
    (["history", ""], ["order"]),
    (["serve", "--store", "http://db:6379"], ["store must be", "redis://", "got 'http://db:6379'"]),
    (["serve", "--store", "redis://127.0.0.1:6379/0", "--node-id", "a/b"], ["node_id", "'/'"]),
    (["serve", "--store", "redis://x/0", "--lease-ms", "10"], ["lease_ms", ">= 300"]),
    (["send", "user:1", "x", "--router", "tcp://127.0.0.1:1,localhost:2"], ["no scheme"]),
])
def test_mistakes_get_one_line_and_no_traceback(args, needles):
    assert_clean_failure(run_cli(*args), *needles)


def test_no_router_running():
    port = free_port()
    out = run_cli("send", "user:1", "x", "--router", f"tcp://127.0.0.1:{port}", "--timeout", "0.5")
    assert_clean_failure(out, "no WELCOME", "router serve")
    out = run_cli("listen", "user:1", "--router", f"tcp://127.0.0.1:{port}")
    assert_clean_failure(out, "no WELCOME", "router serve")


def test_serve_reports_why_it_cannot_bind():
    out = run_cli("serve", "--bind", "tcp://nosuch.invalid:5555", "--journal", "false",
                  "--history", "false", "--insecure")
    assert_clean_failure(out, "cannot bind tcp://nosuch.invalid:5555", "no such interface or host")
    out = run_cli("serve", "--bind", "tcp://192.0.2.1:5555", "--journal", "false",
                  "--history", "false", "--insecure")
    assert_clean_failure(out, "cannot bind tcp://192.0.2.1:5555", "no interface of this machine")


def test_serve_refuses_a_data_dir_it_cannot_write(tmp_path):
    out = run_cli("serve", "--data-dir", "/proc/x", "--bind", f"tcp://127.0.0.1:{free_port()}")
    assert_clean_failure(out, "cannot use data directory /proc/x", "--data-dir")
    afile = tmp_path / "file"
    afile.write_text("")
    out = run_cli("serve", "--data-dir", str(afile / "data"),
                  "--bind", f"tcp://127.0.0.1:{free_port()}")
    assert_clean_failure(out, f"cannot use data directory {afile / 'data'}", "Not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write a read-only directory")
def test_serve_refuses_a_read_only_data_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    out = run_cli("serve", "--data-dir", str(ro), "--bind", f"tcp://127.0.0.1:{free_port()}")
    assert_clean_failure(out, f"cannot use data directory {ro}", "Permission denied")


def test_config_errors_name_their_source(tmp_path):
    out = subprocess.run([sys.executable, "-m", "router", "serve"], capture_output=True,
                         text=True, env={**ENV, "ROUTER_WINDOW": "abc"}, timeout=20)
    assert_clean_failure(out, "ROUTER_WINDOW", "abc")
    bad = tmp_path / "bad.toml"
    bad.write_text("window = [\n")
    assert_clean_failure(run_cli("serve", "--config", str(bad)), str(bad), "not valid TOML")
    assert_clean_failure(run_cli("config", "--config", str(tmp_path / "none.toml")),
                         "cannot read config file", "none.toml")


# ---- wrong causes: the router's refusal, the errno of a failed bind --------------------

def test_listen_shows_the_routers_refusal_at_once(make_router):
    router = make_router("--max-addresses", "1")
    t0 = time.monotonic()
    out = run_cli("listen", "user:1", "user:2", "--router", router.url)
    assert time.monotonic() - t0 < 4.5  # not the 5 s wait for a WELCOME
    assert_clean_failure(out, "ADDRESS_LIMIT", "address table is full")
    assert "is `router serve` running" not in out.stderr


def test_serve_reports_busy_port_as_such(router):
    out = run_cli("serve", "--bind", router.url, "--data-dir", router.data_dir + "-2")
    assert_clean_failure(out, f"cannot bind {router.url}", "already in use")
    assert out.returncode == 1


# ---- order history from the CLI ---------------------------------------------------------

def test_send_order_by_bare_id_is_in_history(router):
    listener = subprocess.Popen(
        [sys.executable, "-m", "router", "listen", "merchant:12", "--router", router.url,
         "--count", "2", "--timeout", "10"], stdout=subprocess.PIPE, text=True, env=ENV)
    for order in ("1002", "order:1002"):
        sent = run_cli("send", "merchant:12", f'{{"order": "{order}"}}', "--router", router.url,
                       "--kind", "order.created", "--order", order, "--wait", "delivered")
        assert sent.returncode == 0, sent.stderr
    listener.communicate(timeout=15)
    deadline = time.monotonic() + 5
    while True:  # the router writes history between 100 ms slices
        hist = run_cli("history", "1002", "--data-dir", router.data_dir, "--json")
        lines = hist.stdout.splitlines()
        if sum('"event":"acked"' in line for line in lines) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert hist.returncode == 0, hist.stderr
    assert sum('"event":"accepted"' in line for line in lines) == 2, hist.stdout
    assert sum('"event":"acked"' in line for line in lines) == 2, hist.stdout
    same = run_cli("history", "order:1002", "--data-dir", router.data_dir, "--json")
    assert same.stdout.splitlines() == lines


# ---- channels and presence from the CLI -------------------------------------------------

def _listener(router, address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "router", "listen", address, "--router",
                             router.url, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def test_join_send_presence_leave(router):
    user = _listener(router, "user:31", "--timeout", "4")
    merchant = _listener(router, "merchant:31", "--timeout", "4")
    try:
        router.wait_for_log("peer connected: listen (endpoint, 1 addresses)")
        deadline = time.monotonic() + 10
        while "user:31 online" not in (p := run_cli("presence", "user:31", "merchant:31",
                                                    "--router", router.url)).stdout \
                or "merchant:31 online" not in p.stdout:
            assert time.monotonic() < deadline, p.stdout + p.stderr
            time.sleep(0.1)
        off = run_cli("presence", "user:31", "rider:404", "--router", router.url)
        assert off.returncode == 0 and "rider:404 offline" in off.stdout
        assert "user:31 online since" in off.stdout
        every = run_cli("presence", "--router", router.url, "--json")
        assert {"user:31", "merchant:31"} <= set(__import__("json").loads(every.stdout))

        joined = run_cli("join", "order:31", "user:31", "merchant:31", "--router", router.url)
        assert joined.returncode == 0 and "order:31: joined user:31 merchant:31" in joined.stdout
        sent = run_cli("send", "order:31", "where is my food", "--channel", "--class", "chat",
                       "--router", router.url, "--wait", "delivered")
        assert sent.returncode == 0 and sent.stdout.strip().endswith("DELIVERED"), sent.stdout

        left = run_cli("leave", "order:31", "merchant:31", "--router", router.url)
        assert left.returncode == 0 and "left merchant:31" in left.stdout
        sent = run_cli("send", "order:31", "only for the user", "--channel", "--router",
                       router.url, "--wait", "delivered")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        closed = run_cli("leave", "order:31", "--router", router.url)
        assert closed.returncode == 0 and "order:31: closed" in closed.stdout
        refused = run_cli("send", "order:31", "x", "--channel", "--router", router.url)
        assert "REFUSED UNKNOWN_CHANNEL" in refused.stdout
    finally:
        user_out, _ = user.communicate(timeout=15)
        merchant_out, _ = merchant.communicate(timeout=15)
    assert "where is my food" in user_out and "only for the user" in user_out
    assert "where is my food" in merchant_out and "only for the user" not in merchant_out


def test_join_reports_the_routers_refusal(make_router):
    router = make_router("--max-addresses", "1")
    out = run_cli("join", "order:5", "user:1", "user:2", "--router", router.url)
    assert_clean_failure(out, "router join: router error ADDRESS_LIMIT")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


# ---- help, settings log, `router config` ------------------------------------------------

def test_serve_help_shows_each_settings_documentation():
    out = run_cli("serve", "--help").stdout
    flat = re.sub(r"-\s+", "-", " ".join(out.split()))  # argparse wraps after hyphens
    for name, default, _, doc in config.describe():
        assert re.sub(r"-\s+", "-", doc) in flat, f"--{name} help lacks its documentation"
    assert "address. (default 1024)" in flat
    assert "Repeatable. (default tcp://127.0.0.1:5555)" in flat


def test_send_help_explains_every_flag():
    flat = " ".join(run_cli("send", "--help").stdout.split())
    for text in ("--ttl-ms MS time to live", "--wait {accepted,delivered,none} receipt to wait for",
                 "--timeout SECONDS how long to wait", "(default tcp://127.0.0.1:5555)",
                 "--order ID the order this message belongs to, 1002 or order:1002"):
        assert text in flat, text


def test_router_config_prints_settings_that_load_back(tmp_path):
    env = {k: v for k, v in ENV.items() if not k.startswith("ROUTER_")}
    out = subprocess.run(
        [sys.executable, "-m", "router", "config", "--window", "64", "--bind",
         "tcp://127.0.0.1:7001", "--bind", "ipc:///tmp/r.sock", "--fsync", "false"],
        capture_output=True, text=True, env={**env, "ROUTER_MAX_PAYLOAD": "3000"}, timeout=20)
    assert out.returncode == 0, out.stderr
    path = tmp_path / "router.toml"
    path.write_text(out.stdout)
    want = config.load(None, env={"ROUTER_MAX_PAYLOAD": "3000"}, overrides={
        "window": 64, "bind": ["tcp://127.0.0.1:7001", "ipc:///tmp/r.sock"], "fsync": "false"})
    assert config.load(path, env={}) == want
    assert "# Reliable deliveries in flight (sent, not acked) per address.\n# (default 1024)\n" \
           "window = 64\n" in out.stdout
    plain = subprocess.run([sys.executable, "-m", "router", "config"], capture_output=True,
                           text=True, env=env, timeout=20)
    path.write_text(plain.stdout)
    assert config.load(path, env={}) == config.Settings()


def test_serve_logs_its_effective_settings(make_router):
    r = make_router("--window", "77")
    log = r.wait_for_log("settings:")
    line = next(line for line in log.splitlines() if "settings:" in line)
    assert "window=77" in line and f'data_dir="{r.data_dir}"' in line and "bind=[" in line


# ---- listen leaves cleanly; shows router errors -----------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_listen_leaves_with_bye_on_a_signal(router, sig):
    listener = _listener(router, "user:41")
    router.wait_for_log("peer connected: listen")
    listener.send_signal(sig)
    out, err = listener.communicate(timeout=10)
    assert listener.returncode == 0, err
    assert "Traceback" not in err
    log = router.wait_for_log("peer disconnected: listen")
    assert "peer disconnected: listen (endpoint, bye)" in log, log


def test_listen_prints_router_errors_as_one_line():
    """A router's ERROR after WELCOME (for example: another connection took over the
    address) goes to stderr as one line, and listen goes on."""
    import zmq

    from router import protocol as P

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    url = f"tcp://127.0.0.1:{free_port()}"
    sock.bind(url)
    listener = subprocess.Popen([sys.executable, "-m", "router", "listen", "user:7", "--router",
                                 url, "--timeout", "2"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert sock.poll(10_000), "listen sent no HELLO"
        ident, hello = sock.recv_multipart()
        assert hello[2] == P.Command.HELLO
        sock.send_multipart([ident, P.prefix(P.Command.WELCOME) + P.WELCOME.pack(1000, 3, 1 << 20)])
        sock.send_multipart([ident, P.prefix(P.Command.ERROR)
                             + P.ERROR.pack(P.ErrorCode.BAD_ADDRESS, 0),
                             b"user:7 was taken over by another connection"])
        out, err = listener.communicate(timeout=15)
    finally:
        sock.close(linger=0)
    assert listener.returncode == 0, err
    assert err.strip().splitlines() == [
        "router listen: router error BAD_ADDRESS (msg 0): user:7 was taken over by another "
        "connection"], err


# ---- one router per data directory ------------------------------------------------------

def test_second_router_on_a_data_dir_refuses_and_a_killed_ones_lock_is_released(router):
    out = run_cli("serve", "--data-dir", router.data_dir, "--bind", f"tcp://127.0.0.1:{free_port()}")
    assert_clean_failure(out, router.data_dir, f"pid {router.pid}", "another router")
    segments = sorted(os.listdir(os.path.join(router.data_dir, "journal")))
    assert [s for s in segments if s.endswith(".log")] == ["0000000001.log"], segments
    router.kill()
    router.restart()  # the kernel dropped the SIGKILLed router's lock
    again = run_cli("serve", "--data-dir", router.data_dir, "--bind", f"tcp://127.0.0.1:{free_port()}")
    assert_clean_failure(again, f"pid {router.pid}")


# ---- commands from entry points (router demo) -------------------------------------------

def test_demo_is_a_command_and_explains_its_flags():
    top = run_cli("--help")
    assert top.returncode == 0 and "demo" in top.stdout, top.stdout
    demo = run_cli("demo", "--help")
    assert demo.returncode == 0, demo.stderr
    for flag in ("--seconds", "--speed", "--start", "--riders", "--merchants", "--users",
                 "--base-per-min", "--workers", "--seed", "--data-dir"):
        assert flag in demo.stdout, flag


def test_demo_flag_mistakes_get_one_line():
    out = run_cli("demo", "--workers", "x")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        "router demo: argument --workers: invalid int value: 'x' (see router demo --help)"]


def fake_distribution(where, entry_points: str) -> dict[str, str]:
    """An installed distribution in ``where`` (a dist-info directory and the module
    fakecmd) with these entry points; the environment that puts it on the path."""
    info = where / "fake_cmds-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-cmds\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    (where / "fakecmd.py").write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('hello', help='say hello')\n"
        "    p.add_argument('--name', default='world')\n"
        "    return lambda args: print(f'hello {args.name}') or 0\n")
    return {**ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{where}"}


def test_installed_entry_points_add_commands_and_a_broken_one_says_why(tmp_path):
    env = fake_distribution(tmp_path, "[order_router.commands]\nhello = fakecmd:register\n"
                            "broken = no_such_module_here:register\nsend = fakecmd:register\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "router", *args], capture_output=True,
                              text=True, env=env, timeout=20)

    hello = run("hello", "--name", "city")
    assert (hello.returncode, hello.stdout) == (0, "hello city\n"), hello.stderr
    top = run("--help").stdout
    assert all(name in top for name in ("hello", "broken", "demo")), top
    for args in (["broken"], ["broken", "--help"], ["broken", "--seconds", "3", "--", "x"]):
        out = run(*args)
        assert out.returncode == 1 and out.stdout == "", out
        assert out.stderr.startswith("router broken: cannot load this command from "
                                     "no_such_module_here:register"), out.stderr
        assert len(out.stderr.splitlines()) == 1 and "pip install -e ." in out.stderr
    assert "usage: router send" in run("send", "--help").stdout  # a built-in keeps its name


def test_without_any_entry_point_a_command_elsewhere_is_one_usage_line(monkeypatch, capsys):
    import importlib.metadata

    from router import cli

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    monkeypatch.setattr(cli, "_checkout_entry_points", lambda: [])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--seconds", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("router: argument command: invalid choice: 'demo'"), err
    assert len(err.splitlines()) == 1 and cli.COMMANDS_GROUP in err and "pip install" in err


def test_installed_entry_points_come_before_the_checkouts(monkeypatch):
    import importlib.metadata

    from router import cli

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [])
    assert [(ep.name, ep.value) for ep in cli._command_entry_points()] == [
        ("demo", "workers.commands:demo")]  # from pyproject.toml: a checkout on PYTHONPATH
    installed = importlib.metadata.EntryPoint("demo", "elsewhere:demo", cli.COMMANDS_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [installed])
    assert cli._command_entry_points() == [installed]


def test_builtin_commands_do_not_look_up_the_others():
    probe = ("import sys; from router import cli\n"
             "try: cli.main(['send', '--help'])\nexcept SystemExit: pass\n"
             "print(sorted(m for m in sys.modules if m.startswith(('workers', "
             "'importlib.metadata'))), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=ENV, timeout=20)
    assert out.stderr.strip() == "[]", out.stderr
