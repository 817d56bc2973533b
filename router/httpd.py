"""The ops HTTP endpoint of a process: ``/metrics``, ``/healthz`` and ``/readyz``.

One small server for the router and for every worker process, so a load balancer,
Kubernetes or a plain ``curl`` asks each the same three questions:

- ``GET /metrics``: the Prometheus exposition of a registry;
- ``GET /healthz``: 200 while the process's main loop runs (it calls :meth:`Health.beat`
  at least every ``stall_seconds``); 503 once the loop has stalled that long. Before the
  loop first runs (start-up, journal replay) the process counts as alive: a liveness
  probe must not kill a router that is still replaying its journal;
- ``GET /readyz``: 200 when the process does its job (the router: journal replayed and
  sends accepted; a worker: READY sent to the router), 503 before that and while it stops;
- anything else: 404; methods other than GET and HEAD: 405.

The server runs in a daemon thread and never touches the process's loop: the loop only
sets flags and timestamps on :class:`Health`.
"""

from __future__ import annotations

import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector,
                               PlatformCollector, ProcessCollector, generate_latest)

#: Seconds without a :meth:`Health.beat` after which /healthz answers 503.
STALL_SECONDS = 10.0


def process_registry() -> CollectorRegistry:
    """A registry holding the process's own families (CPU, memory, open files, start
    time, Python version and GC; docs/METRICS.md, "Every process"): every process's
    /metrics starts from it."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Health:
    """Liveness and readiness of one process, set by its main loop.

    ``ready`` is either set with :meth:`set_ready` or computed by ``ready_check`` (a
    callable returning bool, asked at each /readyz); :meth:`stopping` overrides both.
    """

    def __init__(self, ready_check: Callable[[], bool] | None = None,
                 stall_seconds: float = STALL_SECONDS) -> None:
        self.stall_seconds = stall_seconds
        self._ready_check = ready_check
        self._ready = False
        self._stopping = False
        self._last_beat: float | None = None  # None: the loop has not run yet

    def beat(self) -> None:
        """Called by the main loop on every pass: the process is alive."""
        self._last_beat = time.monotonic()

    def set_ready(self, ready: bool) -> None:
        """The process starts (True) or ceases (False) to do its job."""
        self._ready = ready

    def stopping(self) -> None:
        """The process is shutting down: not ready from now on, whatever else says."""
        self._stopping = True

    def alive(self) -> tuple[bool, str]:
        """(alive, why) for /healthz."""
        if self._last_beat is None:
            return True, "starting: the main loop has not run yet"
        idle = time.monotonic() - self._last_beat
        if idle > self.stall_seconds:
            return False, f"main loop stalled: no pass for {idle:.1f}s " \
                          f"(limit {self.stall_seconds:g}s)"
        return True, "main loop running"

    def ready(self) -> tuple[bool, str]:
        """(ready, why) for /readyz."""
        if self._stopping:
            return False, "stopping"
        ok = self._ready_check() if self._ready_check else self._ready
        return (True, "ready") if ok else (False, "not ready yet")


class _Handler(BaseHTTPRequestHandler):
    """Routes the three paths; the server carries the registry and the Health."""

    server: "OpsServer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, ctype = HTTPStatus.OK, CONTENT_TYPE_LATEST
            payload = generate_latest(self.server.registry)
        elif path in ("/healthz", "/readyz"):
            health = self.server.health
            ok, why = health.alive() if path == "/healthz" else health.ready()
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            ctype, payload = "text/plain; charset=utf-8", f"{why}\n".encode()
        else:
            status, ctype = HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8"
            payload = f"not found: {path}; try /metrics, /healthz or /readyz\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _method_not_allowed(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD are served")

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed  # noqa: N815

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        """Silent: a scrape every few seconds is not worth a log line."""


class OpsServer(ThreadingHTTPServer):
    """The HTTP server; :func:`serve` starts one in a daemon thread."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], registry: CollectorRegistry,
                 health: Health) -> None:
        self.registry, self.health = registry, health
        super().__init__(addr, _Handler)
        self._thread: threading.Thread | None = None

    def start(self) -> "OpsServer":
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="ops-http",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(5)


def serve(port: int, host: str, registry: CollectorRegistry, health: Health) -> OpsServer:
    """Serve ``registry`` and ``health`` on host:port; raises OSError when the port is taken."""
    return OpsServer((host, port), registry, health).start()
