"""The router's trust boundary: its socket's security mechanism, the ZAP handler, the
credentials the core checks, reloads on SIGHUP, and scoped built-in queries.

docs/PROTOCOL.md §11 says what a peer sees; docs/SECURITY.md how an operator sets it up.
With no credentials the router runs open, which :class:`router.config.Settings` allows
on loopback and ipc only (or anywhere with ``--insecure``).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import zmq

from router.auth import credentials as creds_file
from router.auth.credentials import Credentials, CredentialsError
from router.auth.grants import CORE_RIGHTS, Action, Principal, matches
from router.auth.keys import KeyFileError, load_secret
from router.auth.zap import DOMAIN, ZapHandler

log = logging.getLogger("router")


class Trust:
    """Owns the credentials and the ZAP handler of one router; ``None`` credentials:
    open. Call :meth:`secure` on the ROUTER socket before it binds, then :meth:`apply`
    with the core."""

    def __init__(self, settings: Any, context: zmq.Context) -> None:
        self.settings = settings
        self.context = context
        self.credentials: Credentials | None = None
        self.zap: ZapHandler | None = None
        self.server_keys: tuple[bytes, bytes] | None = None
        if settings.credentials:
            try:
                self.credentials = creds_file.load(settings.credentials)
                if settings.mechanism == "curve":
                    self.server_keys = load_secret(settings.curve_secret_key)
            except (CredentialsError, KeyFileError) as exc:
                raise ValueError(str(exc)) from None

    @property
    def open(self) -> bool:
        """No credentials: every peer may do everything."""
        return self.credentials is None

    def secure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server asking our ZAP handler (started here)."""
        if self.open:
            return
        self.zap = ZapHandler(self.context, self.credentials).start()
        sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN)
        if self.server_keys is None:  # mechanism plain: names and passwords, no crypto
            sock.setsockopt(zmq.PLAIN_SERVER, 1)
            return
        public, secret = self.server_keys
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)

    def apply(self, core: Any) -> int:
        """Hand the credentials to the core; returns the peers it revoked."""
        if self.open:
            return 0
        principals, user_ids = self.credentials.core_args()
        return core.set_auth(principals, user_ids, CORE_RIGHTS)

    def announce(self, endpoints: Iterable[str]) -> None:
        """Say at start who may connect."""
        if self.open:
            level = logging.WARNING if self.settings.insecure else logging.INFO
            log.log(level, "no credentials: running OPEN on %s, every peer may do "
                    "everything%s", ", ".join(endpoints),
                    " (--insecure: reachable from other hosts)" if self.settings.insecure
                    else " (loopback and ipc only)")
            return
        c = self.credentials
        how = (f"CURVE on every endpoint, server public key {self.server_keys[0].decode()}"
               if self.server_keys else "PLAIN (passwords, not encrypted) on every endpoint")
        log.info("credentials %s: %d principals, %d keys; %s", c.path, len(c.principals),
                 len(c.by_key()), how)

    def reload(self, core: Any) -> None:
        """SIGHUP: read the file again; a file that does not load changes nothing."""
        if self.open:
            log.warning("SIGHUP: no credentials file to reload (the router runs open)")
            return
        try:
            new = creds_file.load(self.settings.credentials)
        except CredentialsError as exc:
            log.error("SIGHUP: credentials NOT reloaded, the previous ones stay: %s", exc)
            return
        self.credentials = new
        self.zap.reload(new)
        revoked = self.apply(core)
        log.info("SIGHUP: credentials reloaded from %s: %d principals, %d keys; %d "
                 "connections revoked", new.path, len(new.principals), len(new.by_key()),
                 revoked)

    def principal(self, index: int) -> Principal | None:
        """The principal the core numbered ``index`` (None: open, or none)."""
        if self.open or index < 0 or index >= len(self.credentials.principals):
            return None
        return self.credentials.principals[index]

    def stop(self) -> None:
        """Stop the ZAP handler."""
        if self.zap is not None:
            self.zap.stop()


def may_see_order(principal: Principal | None, events: list[dict]) -> bool:
    """``router.history`` scope: open or ``all``: yes; ``own``: the order's events name
    an address the principal may bind or a sender name it may use."""
    if principal is None or principal.history == "all":
        return True
    if principal.history == "none":
        return False
    for e in events:
        if e.get("address") and principal.allows(Action.BIND, e["address"]):
            return True
        if e.get("sender") and any(matches(p, e["sender"]) for p in principal.names):
            return True
    return False


def visible_addresses(principal: Principal | None, addresses: dict[str, Any]) -> dict:
    """``router.presence`` scope: every address (open, ``all``), the ones the principal
    may bind (``own``), or none."""
    if principal is None or principal.presence == "all":
        return addresses
    if principal.presence == "none":
        return {}
    return {a: v for a, v in addresses.items() if principal.allows(Action.BIND, a)}
