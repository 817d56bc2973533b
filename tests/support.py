"""Helpers the test modules share (no test module imports another): router processes
and raw peers, receiving a known number of deliveries, reading a refusal, and a steady
reliable traffic generator, waiting on a condition (wait_until); and the protocol
fuzzers (hostile traffic). Fixtures that use them are in conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import zmq

from router import protocol as P
from router.auth import tokens
from router.auth.credentials import TokenKey
from router.client import Endpoint, Sender
from router.ports import free_port  # noqa: F401  (the tests' one way to pick a port)
from router.protocol import Command, ErrorCode, MsgClass, Role, Status

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate, timeout: float, message: str, interval: float = 0.05):
    """Call ``predicate()`` every ``interval`` s until it returns something true, and
    return that; fail with "timed out after <timeout> s waiting for <message>" once
    ``timeout`` s have passed. For waits on a condition where a sleep would guess how
    long it takes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


class RouterProcess:
    """A `router serve` subprocess bound to one tcp and one ipc endpoint.

    Its socket, data directory and router.log are in a temporary directory
    (``ipc_dir``) that outlives stop() and kill(), so that restart() finds its data and
    a test can read the log afterwards. Under pytest, conftest.py removes it after the
    test, or keeps it and names it in the report when the test failed; elsewhere call
    remove_files().
    """

    #: Every instance whose directory is still on disk (conftest.py's hooks remove
    #: them, except those with ``keep_files`` set).
    on_disk: list["RouterProcess"] = []

    def __init__(self, *args: str, env: dict | None = None, under: str | None = None) -> None:
        self.port = free_port()
        # ``under``: the parent of that directory (the latency suites put the journal on
        # a RAM filesystem); default: the system's temporary directory
        self.ipc_dir = tempfile.mkdtemp(prefix="router-test-", dir=under)
        self.keep_files = False  # set when a test failed while this router existed
        RouterProcess.on_disk.append(self)
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.ipc = f"ipc://{self.ipc_dir}/router.sock"
        self.log_path = Path(self.ipc_dir) / "router.log"
        self.data_dir = f"{self.ipc_dir}/data"
        self.args = ["--bind", self.url, "--bind", self.ipc, "--summary-interval", "1",
                     "--data-dir", self.data_dir, *args]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0, wait: bool = True) -> "RouterProcess":
        """Start the process and wait until it answers a HELLO (``wait=False``: do not
        wait, as for a standby that serves only once it takes the lease)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "router", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        if not wait:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.log()}")
            if self.serving():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"router did not answer within {timeout}s:\n{self.log()}")

    def serving(self) -> bool:
        """Ready: it answers a HELLO; an authenticated router (which a plain probe
        cannot reach) once its log says it serves."""
        if "--credentials" in self.args:
            return "router serving on" in self.log()
        return answers_hello(self.url)

    def restart(self, timeout: float = 10.0) -> "RouterProcess":
        """Start again on the same endpoints and data directory (after stop or kill)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("router is still running: stop or kill it first")
        self._log.close()
        return self.start(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or closed."""
        self.proc.kill()
        self.proc.wait(10)


    def log(self) -> str:
        """Everything the router logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        """Wait until the router has logged ``text`` (it logs between 100 ms slices)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            assert time.monotonic() < deadline, f"router never logged {text!r}:\n{log}"
            time.sleep(0.05)
        return log

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the process and wait for it; return its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    @property
    def pid(self) -> int:
        """The router process's pid."""
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Started and not exited (yet)."""
        return self.proc is not None and self.proc.poll() is None

    def remove_files(self) -> None:
        """Delete the temporary directory (socket, data dir, log); call after stop."""
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
        if self in RouterProcess.on_disk:
            RouterProcess.on_disk.remove(self)


class Peer:
    """A raw DEALER socket speaking frames, for protocol-level tests."""

    def __init__(self, url: str, identity: bytes | None = None,
                 security: dict[int, bytes] | None = None) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if identity:
            self.sock.setsockopt(zmq.IDENTITY, identity)
        for option, value in (security or {}).items():  # CURVE keys (router/auth/keys.py)
            self.sock.setsockopt(option, value)
        self.sock.connect(url)

    def send(self, *frames: bytes) -> None:
        """Send one message of these frames as they are (no checks: tests send garbage)."""
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 2.0) -> list[bytes] | None:
        """The next message's frames (heartbeats included), or None after ``timeout`` s."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()

    def recv_command(self, command: P.Command, timeout: float = 2.0,
                     skip_others: bool = False) -> list[bytes]:
        """The next message with ``command``, skipping heartbeats (and any other command
        with ``skip_others``); fail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            frames = self.recv(max(deadline - time.monotonic(), 0))
            assert frames is not None, f"no {command.name} within {timeout}s"
            if frames[0][2] == command:
                return frames
            assert skip_others or frames[0][2] == P.Command.HEARTBEAT, \
                f"expected {command.name}, got {frames}"

    def hello(self, role: P.Role, name: str, cursors=(), flags: int = 0) -> list[bytes]:
        """Say HELLO and wait for the WELCOME (fails on anything else but heartbeats);
        the WELCOME's frames."""
        self.send(P.encode_hello(role, name, cursors, flags))
        return self.recv_command(P.Command.WELCOME)

    def close(self) -> None:
        """Close the socket at once, dropping anything unsent (no BYE)."""
        self.sock.close(linger=0)

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def answers_hello(url: str, timeout: float = 0.2) -> bool:
    """Whether a router at ``url`` answers a HELLO within ``timeout`` s (then says BYE)."""
    with Peer(url) as probe:
        probe.send(P.encode_hello(P.Role.SENDER, "probe"))
        if probe.recv(timeout=timeout) is None:
            return False
        probe.send(P.prefix(P.Command.BYE))
        return True


def curve_router(make_router, keys: Path, parties, credentials: str, *router_args: str):
    """A router with credentials and CURVE: key pairs for the router and each of
    ``parties`` made in ``keys``, ``credentials`` (TOML naming those key files) written
    beside them, the router started on both. Returns (router, options(party)), the
    latter the SDK's ``server_key``/``key`` for that party."""
    from router.auth.keys import make_pair
    for party in dict.fromkeys(("router", *parties)):
        make_pair(keys, party)
    creds = keys / "credentials.toml"
    creds.write_text(credentials)
    r = make_router("--credentials", str(creds),
                    "--curve-secret-key", str(keys / "router.key_secret"), *router_args)
    r.creds_path, r.keys = creds, keys

    def options(party: str, server: str = "router") -> dict:
        return {"server_key": str(keys / f"{server}.key"),
                "key": str(keys / f"{party}.key_secret")}

    return r, options


def gauge(port: int, name: str) -> float:
    """One unlabelled series from the router's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def drain(ep: Endpoint, n: int, timeout: float = 5.0, ack: bool = True) -> list:
    """Receive exactly ``n`` deliveries within ``timeout`` (fails otherwise)."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {n} deliveries in {timeout}s"
        d = ep.recv(timeout=left)
        if d is not None:
            out.append(d)
            if ack:
                ep.ack(d)
    ep.flush()
    return out


def refusal_of(peer: Peer) -> tuple[list[P.Receipt], tuple[ErrorCode, int, str]]:
    """A refused SEND yields a REFUSED receipt and an ERROR, in either order."""
    got = {}
    while len(got) < 2:
        frames = peer.recv(timeout=2.0)
        assert frames is not None, f"got only {list(got)}"
        got.setdefault(frames[0][2], frames)
    err = got[Command.ERROR]
    return P.decode_receipts(got[Command.RECEIPT][0]), P.decode_error(err[0], err[1])


class Traffic:
    """A sender thread pushing numbered reliable messages round-robin to addresses, and
    a gateway thread consuming and acking them; records what was accepted and got."""

    def __init__(self, url: str, addresses: list[str], rate: float = 400.0,
                 endpoint_url: str | None = None) -> None:
        self.url, self.addresses, self.rate = url, addresses, rate
        self.endpoint_url = endpoint_url or url
        self.accepted: dict[int, tuple[str, int]] = {}
        self.sent: dict[int, tuple[str, int]] = {}
        self.got: dict[str, list[int]] = defaultdict(list)
        self.latencies: list[float] = []
        self.stop_sending = threading.Event()
        self.settled = threading.Event()  # the sender has no unconfirmed message left
        self.stop_all = threading.Event()
        self.errors: list[BaseException] = []
        self.duplicates = 0
        self.threads = [threading.Thread(target=self._guard, args=(f,)) for f in
                        (self._produce, self._consume)]

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as exc:  # surfaced by finish()
            self.errors.append(exc)

    def _on_receipt(self, r: P.Receipt) -> None:
        if r.status in (Status.ACCEPTED, Status.DELIVERED) and r.msg_id in self.sent:
            self.accepted[r.msg_id] = self.sent[r.msg_id]

    def _produce(self) -> None:
        with Sender(self.url, "orders", on_receipt=self._on_receipt, resend_after=1.0,
                    timeout=20) as s:
            n, next_at = 0, time.monotonic()
            while not self.stop_sending.is_set():
                addr = self.addresses[n % len(self.addresses)]
                mid = s.send(addr, f"{n}|{time.time()}", msg_class=MsgClass.ORDER)
                self.sent[mid] = (addr, n)
                n += 1
                next_at += 1.0 / self.rate
                while (left := next_at - time.monotonic()) > 0:  # paced, receipts in between
                    s.poll(left)
            deadline = time.monotonic() + 60
            while s.pending and time.monotonic() < deadline:
                s.poll(0.05)
            self.settled.set()
            while not self.stop_all.is_set():
                s.poll(0.05)

    def _consume(self) -> None:
        with Endpoint(self.endpoint_url, self.addresses, role=Role.GATEWAY, name="gw",
                      timeout=20) as ep:
            while not self.stop_all.is_set():
                d = ep.recv(timeout=0.05)
                if d is None:
                    continue
                n, sent_at = d.payload.decode().split("|")
                self.got[d.address].append(int(n))
                self.latencies.append(time.time() - float(sent_at))
                ep.ack(d)
            self.duplicates = ep.duplicates

    def start(self) -> "Traffic":
        """Start the sender and gateway threads; returns self."""
        for t in self.threads:
            t.start()
        return self

    def delivered(self) -> set[tuple[str, int]]:
        """(address, number) of every message the gateway got so far."""
        return {(a, n) for a, ns in self.got.items() for n in ns}

    def finish(self, timeout: float = 60.0) -> None:
        """Stop sending, wait until everything accepted was delivered, stop."""
        self.stop_sending.set()
        deadline = time.monotonic() + timeout
        self.settled.wait(timeout)
        while time.monotonic() < deadline:
            if set(self.accepted.values()) <= self.delivered() or self.errors:
                break
            time.sleep(0.1)
        self.stop_all.set()
        for t in self.threads:
            t.join(30)
        if self.errors:
            raise self.errors[0]

    def check(self) -> None:
        """Every accepted message delivered exactly once, in order per address."""
        assert self.accepted, "nothing was accepted"
        missing = set(self.accepted.values()) - self.delivered()
        assert not missing, f"{len(missing)} accepted messages never delivered: {sorted(missing)[:10]}"
        for addr, ns in self.got.items():
            assert len(ns) == len(set(ns)), f"{addr}: duplicates at the application"
            assert ns == sorted(ns), f"{addr}: out of order: {ns[:50]}"


# ---- hostile traffic: structure-aware protocol fuzzing (test_fuzz.py, hostile_load.py) ----


def corpus(rng: random.Random) -> list[list[bytes]]:
    """Valid messages (header frame [+ payload]) of every command a peer may send."""
    addrs = [f"fz:{rng.randrange(50)}" for _ in range(3)]
    cursors = [(a, rng.randrange(5)) for a in addrs]
    payload = rng.randbytes(rng.choice((0, 8, 200, 600)))
    return [
        [P.encode_hello(rng.choice(list(Role)), f"fuzz-{rng.randrange(5)}", cursors)],
        [P.encode_bind(cursors)],
        [P.encode_unbind(addrs)],
        [P.encode_send(addrs[0], rng.getrandbits(64), rng.choice(list(MsgClass)),
                       kind="order.fuzz", key=rng.choice(("", "order:1", "rider:9")),
                       ttl_ms=rng.choice((50, 2_000, 10_000))), payload],
        [P.encode_send("order:fz", rng.getrandbits(64), MsgClass.CHAT, ttl_ms=2_000,
                       flags=P.Flag.CHANNEL), payload],
        [P.encode_ack(cursors)],
        [P.encode_join("order:fz", addrs)],
        [P.encode_join("order:fz", addrs[:1], leave=True)],
        [P.prefix(Command.HEARTBEAT)],
        [P.encode_ready("svc.fuzz", rng.randrange(4))],
        [P.encode_request("svc.fuzz", rng.getrandbits(64), rng.choice((0, 20))), payload],
        [P.encode_reply(rng.getrandbits(64), rng.randrange(3)), payload],
        [P.encode_pack([(P.encode_send(rng.choice(addrs), rng.getrandbits(64),
                                       rng.choice(list(MsgClass)), ttl_ms=2_000), payload),
                        (P.encode_ack(cursors), b""),
                        (P.encode_send(addrs[1], rng.getrandbits(64), MsgClass.NOTICE),
                         payload[:20])])],
    ]


def mutate(rng: random.Random, msg: list[bytes]) -> list[bytes]:
    """One random mutation of a message, or the message unchanged (valid traffic too)."""
    frames = [bytearray(f) for f in msg]
    i = rng.randrange(len(frames))
    f = frames[i]
    how = rng.randrange(8)
    if how == 0 and f:
        for _ in range(rng.randint(1, 4)):
            f[rng.randrange(len(f))] ^= 1 << rng.randrange(8)
    elif how == 1 and f:
        del f[rng.randrange(len(f)):]
    elif how == 2:
        f += rng.randbytes(rng.randint(1, 40))
    elif how == 3 and len(f) > 4:
        f[rng.randrange(4, len(f))] = rng.choice((0, 1, 255, rng.randrange(256)))
    elif how == 4:
        frames.append(bytearray(rng.randbytes(rng.randint(0, 30))))
    elif how == 5 and len(frames) > 1:
        frames.pop()
    elif how == 6:
        frames.insert(0, bytearray(frames[0]))
    return [bytes(x) for x in frames]


def fuzz(url: str, seed: int, stop: threading.Event, counts: list[int],
         security: dict[int, bytes] | None = None) -> None:
    """Send mutated traffic until ``stop``; reconnect now and then as a new peer (with
    ``security``: authenticated, as a principal of an authenticated router)."""
    rng = random.Random(seed)
    while not stop.is_set():
        with Peer(url, security=security) as peer:
            for _ in range(rng.randint(50, 2000)):
                if stop.is_set():
                    break
                try:
                    peer.sock.send_multipart(mutate(rng, rng.choice(corpus(rng))),
                                             flags=zmq.DONTWAIT)
                    counts[0] += 1
                except zmq.Again:
                    time.sleep(0.001)  # our own HWM: the router is reading, just busy
                while peer.sock.poll(0):
                    peer.sock.recv_multipart()  # drain replies so nothing backs up


def source_url(url: str, seed: int) -> str:
    """``url`` connected from a loopback source address of the seed's own (tcp only)."""
    if not url.startswith("tcp://127."):
        return url
    return f"tcp://127.1.{seed // 250 % 250 + 1}.{seed % 250 + 1}:0;{url[len('tcp://'):]}"


def fuzz_shared_id(url: str, seed: int, stop: threading.Event, counts: list[int]) -> None:
    """Like :func:`fuzz`, from two connections that claim the same routing id (a
    client-chosen ZMQ_IDENTITY), one of them replaced now and then: with libzmq's
    ROUTER_HANDOVER this aborted the router process within seconds."""
    rng = random.Random(seed)
    ident = b"shared-%d" % (seed % 2)
    # Each fuzzer connects from a loopback address of its own, as attackers on many
    # hosts would. From 127.0.0.1 alone, against a router with ROUTER_HANDOVER (which
    # in libzmq 4.3.5 never closes a connection it took the id from once that
    # connection sends again), ~14,000 such connections held the even half of the
    # ephemeral port range in FIN-WAIT-2 after ~30 s; closed sockets then piled up
    # in libzmq's reaper and the context refused new ones at its 1,023-socket limit
    # ("Too many open files"): every fuzzer thread died and the run fuzzed nothing.
    src = source_url(url, seed)

    def connect() -> Peer:
        for _ in range(100):
            try:
                return Peer(src, identity=ident)
            except zmq.ZMQError:  # EMFILE: closed sockets not reaped yet
                time.sleep(0.05)
        return Peer(src, identity=ident)

    peers = [connect(), connect()]
    try:
        while not stop.is_set():
            if rng.random() < 0.05:
                peers.pop(rng.randrange(2)).close()
                peers.append(connect())
            peer = rng.choice(peers)
            try:
                peer.sock.send_multipart(mutate(rng, rng.choice(corpus(rng))),
                                         flags=zmq.DONTWAIT)
                counts[0] += 1
            except zmq.Again:
                time.sleep(0.001)
            while peer.sock.poll(0):
                peer.sock.recv_multipart()
    finally:
        for peer in peers:
            peer.close()


# --------------------------------------------------------------------------- gateways
#: The key the gateways of the tests verify app tokens with.
GATEWAY_KEY = TokenKey("k1", b"gateway-test-secret-0123456789abcdef")


@contextlib.contextmanager
def start_gateway(r, tmp_path: Path, *extra: str):
    """A `router gateway` process for router ``r`` (its credentials and gateway.log in
    ``tmp_path``); yields (ws url, http base, metrics
    port) and stops it after, checking its log for tracebacks."""
    creds = tmp_path / "credentials.toml"
    creds.write_text(f'[tokens]\nkeys = [{{id = "k1", secret = "{GATEWAY_KEY.secret.decode()}"}}]\n')
    port, mport = free_port(), free_port()
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "router", "gateway", "--router", r.url,
                             "--listen", f"127.0.0.1:{port}", "--credentials", str(creds),
                             "--metrics-port", str(mport), *extra],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 15
    while b"gateway serving apps" not in (tmp_path / "gateway.log").read_bytes():
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        assert time.monotonic() < deadline, "gateway did not start"
        time.sleep(0.05)
    try:
        yield f"ws://127.0.0.1:{port}/ws", f"http://127.0.0.1:{port}", mport
    finally:
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()


def frames_until(ws, n: int, kind: str = "deliver", timeout: float = 5.0,
                 ack: bool = False) -> list[dict]:
    """The next ``n`` frames of ``kind`` a gateway app gets on ``ws`` (others skipped);
    ``ack``: ack each delivery as it comes, as an app does."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {n} {kind} frames: {out}"
        try:
            f = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        if f["type"] == kind:
            out.append(f)
            if ack:
                ws.send(json.dumps({"type": "ack", "seq": f["seq"]}))
    return out


def token(address: str, ttl: float = 600, key: TokenKey = GATEWAY_KEY, now=None) -> str:
    """A token for ``address`` signed with ``key``."""
    return tokens.issue(address, ttl, [key], "order-router", now=now)


def crash_loop(kills: int, seed: int, *router_args: str) -> Traffic:
    """Reliable traffic to four merchants through a router SIGKILLed and restarted
    ``kills`` times at random moments (``seed``); checked: nothing ACCEPTED lost, none
    delivered twice or out of order."""
    rng = random.Random(seed)
    router = RouterProcess(*router_args).start()
    try:
        traffic = Traffic(router.url, [f"merchant:{i}" for i in range(4)]).start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.2))
            router.kill()
            time.sleep(rng.uniform(0.0, 0.3))
            router.restart()
        time.sleep(1.0)
        traffic.finish()
        traffic.check()
        return traffic
    finally:
        router.stop(signal.SIGKILL)
