"""Router settings: defaults, then an optional TOML file, then environment, then flags.

Every field of :class:`Settings` can be set three ways, later ones winning:

* a TOML file (``--config router.toml``, or ``ROUTER_CONFIG``) with the field names as
  keys, for example ``bind = ["tcp://0.0.0.0:5555"]`` or ``window = 2048``;
* an environment variable ``ROUTER_<FIELD>`` (``ROUTER_BIND`` takes a comma list);
* a command-line flag ``--<field-with-dashes>``.

The ``#:`` comment above each field is its documentation: `router serve --help` and
`router config` (the effective settings as a commented TOML file) show it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import textwrap
import tomllib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

DEFAULT_BIND = "tcp://127.0.0.1:5555"

_TCP = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d+|\*)")


def check_endpoint(endpoint: str, bind: bool = False) -> str:
    """Return ``endpoint`` if it is ``tcp://host:port`` or ``ipc://path``; else raise
    ValueError saying what is wrong and what to write. ``bind``: the router's side,
    where the host may be ``*`` (every interface) and the port ``*`` or 0 (any free)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        hint = f"; did you mean tcp://{endpoint}?" if _TCP.fullmatch(endpoint) else ""
        raise ValueError(f"endpoint {endpoint!r} has no scheme: write tcp://host:port or "
                         f"ipc:///path/to/socket{hint}")
    if scheme == "ipc":
        if not rest:
            raise ValueError(f"endpoint {endpoint!r} has no path: write ipc:///path/to/socket")
        return endpoint
    if scheme != "tcp":
        raise ValueError(f"endpoint {endpoint!r}: scheme {scheme!r} is not supported; "
                         "use tcp://host:port or ipc:///path/to/socket")
    m = _TCP.fullmatch(rest)
    if not m:
        raise ValueError(f"endpoint {endpoint!r} needs a host and a port: write "
                         f"tcp://host:port, for example {DEFAULT_BIND}")
    host, port = m["host"], m["port"]
    if not bind and (host == "*" or port in ("*", "0")):
        raise ValueError(f"endpoint {endpoint!r}: connect to a real host and port, for "
                         f"example {DEFAULT_BIND} (* and port 0 are for binding)")
    if port != "*" and not (0 if bind else 1) <= int(port) <= 65535:
        raise ValueError(f"endpoint {endpoint!r}: port {port} is outside 1..65535")
    return endpoint


def split_endpoints(endpoint: str) -> list[str]:
    """``tcp://a:5555,tcp://b:5555`` (an active router and its standbys, tried in turn)
    as a list, each checked; raises ValueError naming a bad one."""
    endpoints = [e.strip() for e in endpoint.split(",") if e.strip()]
    if not endpoints:
        raise ValueError("endpoint: give tcp://host:port or ipc://path (several, comma "
                         "separated, for an active router and its standbys)")
    for e in endpoints:
        check_endpoint(e)
    return endpoints


def is_local_endpoint(endpoint: str) -> bool:
    """Whether only this host can reach ``endpoint``: ipc, or tcp on a loopback address
    (127.0.0.0/8, ::1, localhost)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "ipc":
        return True
    m = _TCP.fullmatch(rest)
    if not m:
        return False
    host = m["host"].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


@dataclass
class Settings:
    """Everything `router serve` can be told. Field comments are the documentation."""

    #: Endpoints the ROUTER socket binds (tcp://host:port, ipc:///path).
    bind: list[str] = field(default_factory=lambda: [DEFAULT_BIND])
    #: Largest payload accepted, bytes; larger SENDs are refused with TOO_LARGE.
    max_payload: int = 1 << 20
    #: Reliable deliveries in flight (sent, not acked) per address.
    window: int = 1024
    #: Reliable messages held per address before senders get QUEUE_FULL.
    max_queue: int = 100_000
    #: Messages held in all queues before reliable sends get OVERLOADED.
    max_queued: int = 5_000_000
    #: Messages one sender (by HELLO name) may have held in all queues before its
    #: reliable sends get SENDER_QUOTA and its best-effort ones are shed: one service
    #: flooding offline recipients cannot take the whole queue from the others.
    max_queued_per_sender: int = 1_000_000
    #: Addresses the route table may hold at once (idle ones are reclaimed, see
    #: address_idle_seconds, so this bounds the live table, not the names ever seen).
    max_addresses: int = 1_000_000
    #: An address with nothing queued or in flight, bound by nobody and in no channel is
    #: reclaimed after this many idle seconds (0 = never); one that comes back numbers
    #: above everything it held (docs/PROTOCOL.md, "Address lifetime").
    address_idle_seconds: float = 600.0
    #: A channel nobody has used (JOIN, LEAVE or SEND) for this many seconds is closed
    #: (0 = never): the channel of an order whose service never sent the closing LEAVE.
    channel_idle_seconds: float = 7200.0
    #: Connected peers (connections) the router tracks.
    max_peers: int = 100_000
    #: Protocol heartbeat interval, ms; also sent to peers in WELCOME.
    heartbeat_ms: int = 1000
    #: Heartbeats a peer may miss before it is considered gone.
    liveness: int = 3
    #: ERROR replies per peer per second; beyond that they are counted, not sent, and a
    #: peer past this many faulty messages has the rest of the second ignored.
    errors_per_second: int = 20
    #: libzmq send high-water mark (messages queued per peer) of the ROUTER socket.
    sndhwm: int = 100_000
    #: libzmq receive high-water mark (messages queued per connection) of the ROUTER
    #: socket; 0 (the default) is unbounded. A bound stops reading a connection at the
    #: mark, and libzmq 4.3.5 can abort the process when a connection stopped that way
    #: is then closed by its peer (tests/test_hostile.py): what bounds a peer's input
    #: instead is the router reading connections round-robin and quarantining floods.
    rcvhwm: int = 0
    #: Directory of the journal segments and the order-history database; one router
    #: per directory (a second one refuses to start while the first holds its lock).
    data_dir: str = "router-data"
    #: Journal reliable messages before ACCEPTED (off: in memory only, lost on crash).
    journal: bool = True
    #: fdatasync each group commit (off: survives a router crash, not a machine crash).
    fsync: bool = True
    #: Roll to a new journal segment past this many bytes.
    segment_bytes: int = 64 << 20
    #: Disk budget of the journal, bytes (0 = none); beyond it sends get STORAGE_FAILED.
    max_journal_bytes: int = 0
    #: Where reliable messages are stored: "" for the journal files in data_dir (one
    #: box), or a Redis store shared by an active router and its standbys:
    #: redis://host:port/db, or redis-sentinel://host:port[,host:port...]/master-name to
    #: follow the primary Sentinel names (docs/REDIS.md).
    store: str = ""
    #: Redis store: replicas that must acknowledge each commit (WAIT) before ACCEPTED;
    #: 0 takes the primary's copy alone (development only).
    store_replicas: int = 1
    #: Redis store: ms a commit waits for those replicas; past it the batch is refused
    #: with STORAGE_FAILED.
    store_wait_ms: int = 1000
    #: Redis store: key prefix (one cluster of routers, one active, per prefix).
    store_prefix: str = "router"
    #: Redis store: the leadership lease, ms. The active router renews it every third;
    #: a standby takes over once it lapses.
    lease_ms: int = 3000
    #: Redis store: this router's name in the lease (default host:pid). A router
    #: restarted with the same name takes its lease back at once, with a new epoch.
    node_id: str = ""
    #: Messages drained per loop pass, and so at most per group commit.
    commit_batch: int = 512
    #: A repeated message id from the same sender within this window is not redelivered.
    dedup_seconds: float = 120.0
    #: Reliable messages expected per dedup window (peak rate x window): the dedup table
    #: starts sized for it (16 bytes a slot, 4/3 slots an id rounded up to a power of
    #: two: 64 MB for the default). Beyond it the table doubles by itself, moving its
    #: entries a few per insert, so a busier day than planned costs memory, not a pause.
    dedup_capacity: int = 2_000_000
    #: First redelivery of an unacked window after this many ms; doubles up to the cap.
    retry_ms: int = 1000
    #: Cap of the redelivery interval, ms.
    retry_max_ms: int = 30000
    #: Redeliveries without ack before the message FAILs (0 = retry until its TTL).
    max_attempts: int = 20
    #: Record order-linked messages as a timeline in data_dir/history.db.
    history: bool = True
    #: Days of order history kept.
    history_days: float = 30.0
    #: Credentials file (TOML, docs/SECURITY.md): who may connect with which CURVE key,
    #: as which principal, allowed to do what. Set: every endpoint takes CURVE only, and
    #: SIGHUP reloads the file (revoked keys' connections are closed). Empty: no
    #: credentials, the router runs open, which it allows on loopback and ipc only.
    credentials: str = ""
    #: The router's own CURVE key pair (the secret certificate `router keygen` wrote);
    #: needed with credentials. Clients are given the public half.
    curve_secret_key: str = ""
    #: How clients authenticate when there are credentials: curve (encrypted, a key
    #: pair per client: the default) or plain (a password per principal, nothing
    #: encrypted: for loopback and ipc on a trusted host only, or with --insecure).
    mechanism: str = "curve"
    #: Run open (no credentials) on endpoints other than loopback and ipc anyway.
    insecure: bool = False
    #: Port of the Prometheus /metrics endpoint (0 = off).
    metrics_port: int = 0
    #: Address the metrics endpoint listens on.
    metrics_host: str = "127.0.0.1"
    #: Seconds between one-line summaries in the log (0 = never).
    summary_interval: float = 10.0
    #: Log level: debug, info, warning, error.
    log_level: str = "info"

    def validate(self) -> "Settings":
        """Check ranges; raise ValueError naming the field and what is allowed."""
        if not self.bind:
            raise ValueError("bind: give at least one endpoint, e.g. tcp://127.0.0.1:5555")
        for endpoint in self.bind:
            try:
                check_endpoint(endpoint, bind=True)
            except ValueError as exc:
                raise ValueError(f"bind: {exc}") from None
        for name in ("max_payload", "window", "max_queue", "max_queued",
                     "max_queued_per_sender", "max_addresses",
                     "max_peers", "heartbeat_ms", "liveness", "errors_per_second",
                     "segment_bytes", "commit_batch", "retry_ms", "retry_max_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.max_payload > 256 << 20:
            raise ValueError(f"max_payload is capped at 256 MiB, got {self.max_payload}")
        if self.liveness > 255:
            raise ValueError(f"liveness must be at most 255, got {self.liveness}")
        if not 0 <= self.channel_idle_seconds <= 365 * 86400:
            raise ValueError("channel_idle_seconds must be 0 (never close) or a number "
                             f"of seconds up to a year, got {self.channel_idle_seconds}")
        if not 0 <= self.address_idle_seconds <= 365 * 86400:
            raise ValueError("address_idle_seconds must be 0 (never reclaim) or a number "
                             f"of seconds up to a year, got {self.address_idle_seconds}")
        if self.store and not self.store.startswith(("redis://", "rediss://",
                                                      "redis-sentinel://")):
            raise ValueError(f"store must be empty (the journal in data_dir) or a redis:// "
                             f"or redis-sentinel:// URL, got {self.store!r}")
        if self.store_replicas < 0 or self.store_wait_ms <= 0 or self.lease_ms < 300:
            raise ValueError("store_replicas must be >= 0, store_wait_ms > 0 and lease_ms "
                             f">= 300, got {self.store_replicas}, {self.store_wait_ms}, "
                             f"{self.lease_ms}")
        if "/" in self.node_id:
            raise ValueError(f"node_id may not contain '/', got {self.node_id!r}")
        if self.mechanism not in ("curve", "plain"):
            raise ValueError(f"mechanism must be curve or plain, got {self.mechanism!r}")
        if self.mechanism == "curve" and bool(self.credentials) != bool(self.curve_secret_key):
            raise ValueError("credentials and curve_secret_key go together: give both "
                             "(router keygen router makes the router's key pair), or "
                             "neither to run open on loopback and ipc")
        exposed = [e for e in self.bind if not is_local_endpoint(e)]
        if exposed and self.credentials and self.mechanism == "plain" and not self.insecure:
            raise ValueError(f"bind: {', '.join(exposed)} is reachable from other hosts and "
                             "mechanism plain sends passwords unencrypted: use curve, "
                             "or pass --insecure")
        if exposed and not self.credentials and not self.insecure:
            raise ValueError(f"bind: {', '.join(exposed)} is reachable from other hosts "
                             "and no credentials are set: give --credentials and "
                             "--curve-secret-key (docs/SECURITY.md), bind 127.0.0.1 or "
                             "ipc, or pass --insecure to run open anyway")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level must be debug/info/warning/error, got {self.log_level}")
        return self


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    """Turn a TOML/env/flag value into the field's type; errors name ``source`` (the
    environment variable, or the file and key) so the user knows what to fix."""
    if f.name == "bind":
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError(f"{source}: expected a list of endpoints, got {value!r}")
    kind = type(f.default)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is bool:
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{source}: expected true/false, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) or kind is str:
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{source}: expected {_KIND_NAMES[kind]}, got {value!r}")


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}


def _read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file's table; errors name the file."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {path} is not valid TOML: {exc}") from None


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from a TOML file, the environment and explicit overrides."""
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(Settings)}
    values: dict[str, Any] = {}
    path = path or env.get("ROUTER_CONFIG")
    if path:
        data = _read_toml(path)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        values.update({k: _coerce(known[k], v, f"{path}: {k}") for k, v in data.items()})
    for name, f in known.items():
        var = "ROUTER_" + name.upper()
        raw = env.get(var)
        if raw is not None:
            values[name] = _coerce(f, raw, var)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(known[name], value, "--" + name.replace("_", "-"))
    return Settings(**values).validate()


@lru_cache(maxsize=1)
def field_docs() -> dict[str, str]:
    """The ``#:`` comment above each Settings field, joined into one line per field
    (read once from this module's source, where the documentation is kept)."""
    try:
        lines = inspect.getsource(Settings).splitlines()
    except (OSError, TypeError):  # no source shipped: --help falls back to defaults
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
        elif m := re.match(r"(\w+)\s*:[^=]+=", text):
            if pending:
                docs[m[1]] = " ".join(pending)
            pending = []
        else:
            pending = []
    return docs


def describe() -> list[tuple[str, Any, str, str]]:
    """(field, default, type name, doc) for every setting, for --help and docs."""
    out = []
    docs = field_docs()
    for f in fields(Settings):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append((f.name, default, type(default).__name__, docs.get(f.name, "")))
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(settings: Settings) -> str:
    """``settings`` as a TOML file for ``--config``, each key under its documentation
    and its default when it differs."""
    docs = field_docs()
    out = ["# router settings (`router serve --config FILE`); every key is optional.",
           "# Precedence: flags > ROUTER_<KEY> environment variables > this file.", ""]
    for name, default, _, _ in describe():
        value = getattr(settings, name)
        out.extend(textwrap.wrap(docs.get(name, ""), 88, initial_indent="# ",
                                 subsequent_indent="# "))
        if value != default:
            out.append(f"# (default {_toml_value(default)})")
        out.append(f"{name} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def summary(settings: Settings) -> str:
    """One line of every setting, for the log at start-up."""
    return " ".join(f"{f.name}={_toml_value(getattr(settings, f.name))}"
                    for f in fields(Settings))
