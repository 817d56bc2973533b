"""Router settings: defaults, then an optional TOML file, then environment, then flags.

Every field of :class:`Settings` can be set three ways, later ones winning:

* a TOML file (``--config router.toml``, or ``ROUTER_CONFIG``) with the field names as
  keys, for example ``bind = ["tcp://0.0.0.0:5555"]`` or ``window = 2048``;
* an environment variable ``ROUTER_<FIELD>`` (``ROUTER_BIND`` takes a comma list);
* a command-line flag ``--<field-with-dashes>``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

DEFAULT_BIND = "tcp://127.0.0.1:5555"


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
    #: Addresses the route table may hold.
    max_addresses: int = 1_000_000
    #: Connected peers (connections) the router tracks.
    max_peers: int = 100_000
    #: Protocol heartbeat interval, ms; also sent to peers in WELCOME.
    heartbeat_ms: int = 1000
    #: Heartbeats a peer may miss before it is considered gone.
    liveness: int = 3
    #: ERROR replies per peer per second; beyond that they are counted, not sent.
    errors_per_second: int = 20
    #: libzmq high-water marks (messages) for the ROUTER socket.
    sndhwm: int = 100_000
    rcvhwm: int = 100_000
    #: Directory of the journal segments and the order-history database.
    data_dir: str = "router-data"
    #: Journal reliable messages before ACCEPTED (off: in memory only, lost on crash).
    journal: bool = True
    #: fdatasync each group commit (off: survives a router crash, not a machine crash).
    fsync: bool = True
    #: Roll to a new journal segment past this many bytes.
    segment_bytes: int = 64 << 20
    #: Disk budget of the journal, bytes (0 = none); beyond it sends get STORAGE_FAILED.
    max_journal_bytes: int = 0
    #: Messages drained per loop pass, and so at most per group commit.
    commit_batch: int = 512
    #: A repeated message id from the same sender within this window is not redelivered.
    dedup_seconds: float = 120.0
    #: Reliable messages expected per dedup window (peak rate x window): the dedup table
    #: is sized for it once (16 bytes a slot, 4/3 slots an id rounded up to a power of
    #: two: 64 MB for the default); beyond it, growing the table pauses the router briefly.
    dedup_capacity: int = 2_000_000
    #: First redelivery of an unacked window after this many ms; doubles up to the cap.
    retry_ms: int = 1000
    retry_max_ms: int = 30000
    #: Redeliveries without ack before the message FAILs (0 = retry until its TTL).
    max_attempts: int = 20
    #: Record order-linked messages as a timeline in data_dir/history.db.
    history: bool = True
    #: Days of order history kept.
    history_days: float = 30.0
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
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level must be debug/info/warning/error, got {self.log_level}")
        return self


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Turn a TOML/env/flag value into the field's type."""
    if f.name == "bind":
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value)
    kind = type(f.default)
    if isinstance(value, kind):
        return value
    if kind is bool:
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.name}: expected true/false, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{f.name}: expected {kind.__name__}, got {value!r}") from None


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
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        values.update({k: _coerce(known[k], v) for k, v in data.items()})
    for name, f in known.items():
        raw = env.get("ROUTER_" + name.upper())
        if raw is not None:
            values[name] = _coerce(f, raw)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(known[name], value)
    return Settings(**values).validate()


def describe() -> list[tuple[str, Any, str]]:
    """(field, default, type name) for every setting, for --help and docs."""
    out = []
    for f in fields(Settings):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        out.append((f.name, default, type(default).__name__))
    return out
