"""The ZAP handler (ZeroMQ RFC 27) the router runs for its CURVE (or PLAIN) socket.

libzmq asks it once per connection, during the handshake, whether the client may
connect; nothing here is on the per-message path. A CURVE client's public key must be
in the credentials file: the answer's User-Id is the key (Z85), which libzmq attaches
to every message of the connection, and the core maps it to the key's principal at
HELLO. A PLAIN client must name a principal with a password and give it; its User-Id
is ``plain:NAME``. A NULL client (no security) is accepted, with an empty User-Id,
only by a handler made with ``allow_null=True`` (an open router's); anything else is
refused with status 400 and never reaches the router's loop. A request the handler
cannot parse, or a bug while deciding, gets status 500: the handler thread lives on.
"""

from __future__ import annotations

import logging
import threading
import time

import zmq
from zmq.utils import z85

from router.auth.credentials import Credentials

log = logging.getLogger("router.auth")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: The domain the router's socket asks about (ZMQ_ZAP_DOMAIN).
DOMAIN = b"order-router"


class ZapHandler:
    """Answers ZAP requests on ``context`` from the current credentials, in a thread."""

    def __init__(self, context: zmq.Context, credentials: Credentials,
                 allow_null: bool = False) -> None:
        self.context = context
        self.allow_null = allow_null  #: accept NULL-mechanism clients (open mode)
        self._creds = credentials
        self._keys = credentials.by_key()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        #: Handshakes answered: accepted, and refused by reason.
        self.accepted = 0
        self.refused: dict[str, int] = {}
        #: Requests answered, and the seconds spent answering them (total, slowest):
        #: the handler's share of a handshake, for benchmarks.
        self.answered = 0
        self.answer_s = 0.0
        self.slowest_s = 0.0

    def mean_answer_s(self) -> float:
        """Mean seconds from a request's arrival to its answer (0 before any)."""
        return self.answer_s / self.answered if self.answered else 0.0

    def start(self) -> "ZapHandler":
        """Bind the ZAP endpoint and start answering; returns once bound."""
        self._thread = threading.Thread(target=self._run, name="router-zap", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        if self._error is not None:
            raise RuntimeError(f"the ZAP handler could not start: {self._error}")
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop answering (new connections then fail their handshake)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def reload(self, credentials: Credentials) -> None:
        """Answer from ``credentials`` from now on (connections already up are the
        core's business: Core.set_auth revokes those whose key went)."""
        keys = credentials.by_key()
        with self._lock:
            self._creds, self._keys = credentials, keys

    def _run(self) -> None:
        try:
            sock = self.context.socket(zmq.REP)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(100):
                    frames = sock.recv_multipart()
                    started = time.perf_counter()
                    sock.send_multipart(self._safe_answer(frames))
                    self._timed(time.perf_counter() - started)
        except zmq.ContextTerminated:  # the context ended under us: nothing to answer
            pass
        finally:
            sock.close(linger=0)

    def _safe_answer(self, frames: list[bytes]) -> list[bytes]:
        """:meth:`_answer`, or a 500 if it fails: a REP socket must answer every
        request, or it can never receive again."""
        try:
            return self._answer(frames)
        except Exception:  # noqa: BLE001 - a bug here must not end authentication
            log.exception("ZAP request failed")
            self._count("internal error")
            rid = frames[1] if len(frames) > 1 else b""
            return [b"1.0", rid, b"500", b"internal error", b"", b""]

    def _timed(self, seconds: float) -> None:
        self.answered += 1
        self.answer_s += seconds
        self.slowest_s = max(self.slowest_s, seconds)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        """The reply to one request; a malformed one gets an error status, never an
        exception (the thread must outlive any request)."""
        if len(frames) < 6 or frames[0] != b"1.0":
            self._count("malformed request")
            rid = frames[1] if len(frames) > 1 else b""
            return [b"1.0", rid, b"500", b"malformed ZAP request", b"", b""]
        rid, mechanism, creds = frames[1], frames[5], frames[6:]
        user_id = self._decide(mechanism, creds)
        if user_id is None:
            return [b"1.0", rid, b"400", b"not allowed", b"", b""]
        self.accepted += 1
        return [b"1.0", rid, b"200", b"OK", user_id, b""]

    def _decide(self, mechanism: bytes, creds: list[bytes]) -> bytes | None:
        with self._lock:
            creds_file, keys = self._creds, self._keys
        if mechanism == b"CURVE" and len(creds) == 1 and len(creds[0]) == 32:
            key = z85.encode(creds[0]).decode("ascii")
            if key in keys:
                return key.encode()
            self._count("unknown key")
            return None
        if mechanism == b"PLAIN" and len(creds) == 2:
            name = creds[0].decode(errors="replace")
            if creds_file.check_password(name, creds[1]):
                return f"plain:{name}".encode()
            self._count("bad password")
            return None
        if mechanism == b"NULL" and not creds and self.allow_null:
            return b""
        self._count(f"mechanism {mechanism.decode(errors='replace')[:16]}")
        return None

    def _count(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        log.debug("ZAP refused a connection: %s", reason)
