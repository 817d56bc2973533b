"""The credentials file: who may connect, as which principal, allowed to do what.

A TOML file (``router serve --credentials FILE``; docs/SECURITY.md shows a whole one)::

    [tokens]                        # app tokens the gateway verifies (router.auth.tokens)
    audience = "order-router"
    keys = [{id = "2026-12", secret_file = "tokens-2026-12.secret"},
            {id = "2026-11", secret = "..."}]      # the first signs; every one verifies

    [[principal]]
    name = "orders-api"             # the principal (logs, quotas, rate budget); no * or spaces
    public_keys = ["certs/orders-api.key"]         # CURVE keys: Z85 text or a .key file
    password_sha256 = ""            # or: PLAIN mechanism (trusted hosts), hex SHA-256
    roles = ["sender"]              # HELLO roles: sender, endpoint, gateway, worker
    names = ["orders-api*"]         # HELLO names (default: the principal's name)
    bind = []                       # addresses it may bind
    send = ["merchant:*", "rider:*", "user:*"]     # SEND to addresses, every class,
    # send = {ORDER = ["merchant:*"], LOCATION = ["user:*"]}   or by class
    send_channels = ["order:*"]     # SEND to channels (the same two forms)
    join = ["order:*"]              # JOIN/LEAVE of channels
    serve = []                      # services it may serve (READY)
    request = ["dispatch"]          # services it may REQUEST (router.history too)
    history = "own"                 # router.history: all, own (orders it is part of), none
    presence = "own"                # router.presence: all, own (addresses it may bind), none
    rate = {messages = 5000, bytes = 10_000_000, burst = 2.0}   # per second; optional
    queue_quota = 20000             # deliveries it may have waiting; optional

Patterns are exact names, a prefix ending in ``*``, or ``*``. Every mistake is a
:class:`CredentialsError` naming the file, the principal and the field.
"""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.auth.grants import (SCOPES, Action, Principal, Rate, Rule, check_pattern,
                                CHANNEL_ANY, SEND_ANY)
from router.auth.keys import KeyFileError, load_public
from router.protocol import MsgClass, Role

PRINCIPAL_FIELDS = {"name", "public_keys", "password_sha256", "roles", "names", "bind",
                    "send", "send_channels", "join", "serve", "request", "history",
                    "presence", "rate", "queue_quota"}
TOKEN_FIELDS = {"audience", "keys"}
#: The audience tokens carry when the file does not say.
DEFAULT_AUDIENCE = "order-router"


class CredentialsError(ValueError):
    """The credentials file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class TokenKey:
    """One HMAC key for app tokens: ``id`` goes in the token's ``kid`` header."""

    id: str
    secret: bytes


@dataclass(frozen=True)
class Credentials:
    """A loaded, checked credentials file."""

    path: str
    principals: tuple[Principal, ...]
    token_keys: tuple[TokenKey, ...] = ()
    audience: str = DEFAULT_AUDIENCE
    passwords: dict[str, str] | None = None  #: principal -> hex SHA-256 (PLAIN)

    def by_key(self) -> dict[str, int]:
        """CURVE public key (Z85) -> index of its principal."""
        return {k: i for i, p in enumerate(self.principals) for k in p.keys}

    def user_ids(self) -> dict[bytes, int]:
        """ZAP User-Id -> principal index, as the core is given it (Core.set_auth):
        a CURVE key, or ``plain:NAME`` for a principal with a password."""
        out = {k.encode(): i for k, i in self.by_key().items()}
        for i, p in enumerate(self.principals):
            if self.passwords and p.name in self.passwords:
                out[f"plain:{p.name}".encode()] = i
        return out

    def core_args(self) -> tuple[list, dict]:
        """(principals, user ids) for Core.set_auth."""
        return [p.compiled() for p in self.principals], self.user_ids()

    def check_password(self, name: str, password: bytes) -> bool:
        """PLAIN: whether ``password`` is the principal's (compared as SHA-256)."""
        want = (self.passwords or {}).get(name)
        got = hashlib.sha256(password).hexdigest()
        return want is not None and hmac.compare_digest(want, got)


def load(path: str | Path) -> Credentials:
    """Read and check the credentials file at ``path``."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials file {path}: "
                               f"{exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CredentialsError(f"credentials file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CredentialsError(f"credentials file {path} is not UTF-8 text: {exc}") from None
    return parse(data, path)


def parse(data: dict[str, Any], path: Path) -> Credentials:
    """Check a parsed credentials table (``path`` for messages and relative files)."""
    unknown = set(data) - {"tokens", "principal"}
    if unknown:
        raise CredentialsError(f"{path}: unknown section(s) {sorted(unknown)}; the file has "
                               "[tokens] and [[principal]] entries")
    entries = data.get("principal", [])
    if not isinstance(entries, list):
        raise CredentialsError(f"{path}: write principals as [[principal]] tables")
    principals, passwords, owner = [], {}, {}
    for n, entry in enumerate(entries):
        where = f"{path}: principal #{n + 1}"
        principal, pw = _principal(entry, where, path.parent)
        if any(p.name == principal.name for p in principals):
            raise CredentialsError(f"{where}: name {principal.name!r} is used twice")
        for key in principal.keys:
            if key in owner:
                raise CredentialsError(f"{where} ({principal.name}): public key {key} "
                                       f"already belongs to principal {owner[key]!r}")
            owner[key] = principal.name
        if pw:
            passwords[principal.name] = pw
        principals.append(principal)
    keys, audience = _tokens(data.get("tokens", {}), path)
    return Credentials(str(path), tuple(principals), keys, audience, passwords)


def _principal(entry: Any, where: str, base: Path) -> tuple[Principal, str]:
    if not isinstance(entry, dict):
        raise CredentialsError(f"{where}: expected a table")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise CredentialsError(f"{where}: 'name' is required (a non-empty string)")
    if "*" in name or any(ch.isspace() or not ch.isprintable() for ch in name):
        # the name is also the default HELLO-name pattern: a '*' would widen it silently
        raise CredentialsError(f"{where}: name {name!r}: no '*', spaces or control "
                               "characters (write patterns in 'names')")
    where = f"{where} ({name})"
    unknown = set(entry) - PRINCIPAL_FIELDS
    if unknown:
        raise CredentialsError(f"{where}: unknown field(s) {sorted(unknown)}; known: "
                               f"{', '.join(sorted(PRINCIPAL_FIELDS))}")
    try:
        keys = tuple(load_public(k, base) for k in _strings(entry, "public_keys", where))
    except KeyFileError as exc:
        raise CredentialsError(f"{where}: public_keys: {exc}") from None
    pw = entry.get("password_sha256", "")
    if pw and (not isinstance(pw, str) or len(pw) != 64
               or any(c not in "0123456789abcdef" for c in pw.lower())):
        raise CredentialsError(f"{where}: password_sha256 is 64 hex digits "
                               "(python -c 'import hashlib; print(hashlib.sha256(b\"...\").hexdigest())')")
    if not keys and not pw:
        raise CredentialsError(f"{where}: give public_keys (CURVE) or password_sha256 "
                               "(PLAIN): a principal nobody can authenticate as is a mistake")
    rules = _rules(entry, where)
    principal = Principal(
        name=name, keys=keys, roles=_roles(entry, where),
        names=tuple(_patterns(entry, "names", where) or [name]), rules=tuple(rules),
        history=_scope(entry, "history", where), presence=_scope(entry, "presence", where),
        rate=_rate(entry.get("rate", {}), where), queue_quota=_quota(entry, where))
    return principal, pw.lower()


def _strings(entry: dict, field: str, where: str) -> list[str]:
    """``entry[field]`` as a list of strings (one string counts as a list of one)."""
    value = entry.get(field, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CredentialsError(f"{where}: {field}: expected a list of strings, "
                               f"got {value!r}")
    return value


def _patterns(entry: dict, field: str, where: str) -> list[str]:
    patterns = _strings(entry, field, where)
    try:
        return [check_pattern(p) for p in patterns]
    except ValueError as exc:
        raise CredentialsError(f"{where}: {field}: {exc}") from None


def _roles(entry: dict, where: str) -> frozenset[Role]:
    roles = set()
    for r in _strings(entry, "roles", where):
        try:
            roles.add(Role[r.upper()])
        except KeyError:
            raise CredentialsError(f"{where}: roles: {r!r} is not one of "
                                   f"{', '.join(x.name.lower() for x in Role)}") from None
    if not roles:
        raise CredentialsError(f"{where}: roles: give at least one of "
                               f"{', '.join(x.name.lower() for x in Role)}")
    return frozenset(roles)


def _by_class(entry: dict, field: str, where: str, right) -> list[Rule]:
    """``send``/``send_channels``: a list (every class) or a table by class name."""
    value = entry.get(field, [])
    if isinstance(value, dict):
        rules = []
        for cls_name, patterns in value.items():
            try:
                cls = MsgClass[cls_name.upper()]
            except KeyError:
                raise CredentialsError(f"{where}: {field}: {cls_name!r} is not a message "
                                       f"class ({', '.join(c.name for c in MsgClass)})") from None
            rules += [Rule(right(cls), p) for p in _patterns({field: patterns}, field, where)]
        return rules
    every = SEND_ANY if right == Action.send else CHANNEL_ANY
    return [Rule(every, p) for p in _patterns(entry, field, where)]


def _rules(entry: dict, where: str) -> list[Rule]:
    rules = [Rule(Action.BIND, p) for p in _patterns(entry, "bind", where)]
    rules += [Rule(Action.JOIN, p) for p in _patterns(entry, "join", where)]
    rules += [Rule(Action.SERVE, p) for p in _patterns(entry, "serve", where)]
    rules += [Rule(Action.REQUEST, p) for p in _patterns(entry, "request", where)]
    rules += _by_class(entry, "send", where, Action.send)
    rules += _by_class(entry, "send_channels", where, Action.channel)
    return rules


def _scope(entry: dict, field: str, where: str) -> str:
    value = entry.get(field, "none")
    if value not in SCOPES:
        raise CredentialsError(f"{where}: {field} is one of {', '.join(SCOPES)}, "
                               f"got {value!r}")
    return value


def _rate(value: Any, where: str) -> Rate:
    if not isinstance(value, dict) or set(value) - {"messages", "bytes", "burst"}:
        raise CredentialsError(f"{where}: rate is a table {{messages = N, bytes = N, "
                               f"burst = seconds}}, got {value!r}")
    nums = {}
    for k, default in (("messages", 0), ("bytes", 0), ("burst", 1.0)):
        v = value.get(k, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise CredentialsError(f"{where}: rate.{k} must be a number >= 0, got {v!r}")
        nums[k] = float(v)
    if nums["burst"] <= 0:
        raise CredentialsError(f"{where}: rate.burst must be > 0 seconds")
    return Rate(nums["messages"], nums["bytes"], nums["burst"])


def _quota(entry: dict, where: str) -> int:
    q = entry.get("queue_quota", 0)
    if isinstance(q, bool) or not isinstance(q, int) or q < 0:
        raise CredentialsError(f"{where}: queue_quota must be an integer >= 0, got {q!r}")
    return q


def _tokens(section: Any, path: Path) -> tuple[tuple[TokenKey, ...], str]:
    if not isinstance(section, dict) or set(section) - TOKEN_FIELDS:
        raise CredentialsError(f"{path}: [tokens] has audience and keys only")
    audience = section.get("audience", DEFAULT_AUDIENCE)
    if not isinstance(audience, str) or not audience:
        raise CredentialsError(f"{path}: [tokens] audience must be a non-empty string")
    entries = section.get("keys", [])
    if not isinstance(entries, list):
        raise CredentialsError(f"{path}: [tokens] keys is a list of {{id, secret}} or "
                               f"{{id, secret_file}} tables, got {entries!r}")
    keys, seen = [], set()
    for n, k in enumerate(entries):
        where = f"{path}: [tokens] key #{n + 1}"
        if not isinstance(k, dict) or not isinstance(k.get("id"), str) or not k["id"]:
            raise CredentialsError(f"{where}: each key is {{id = \"...\", secret = \"...\"}} "
                                   "or {id = \"...\", secret_file = \"...\"}")
        if k["id"] in seen:
            raise CredentialsError(f"{where}: id {k['id']!r} is used twice")
        seen.add(k["id"])
        keys.append(TokenKey(k["id"], _secret(k, where, path.parent)))
    return tuple(keys), audience


def _secret(k: dict, where: str, base: Path) -> bytes:
    if set(k) - {"id", "secret", "secret_file"} or ("secret" in k) == ("secret_file" in k):
        raise CredentialsError(f"{where} ({k['id']}): give exactly one of secret and "
                               "secret_file")
    value = k.get("secret", k.get("secret_file"))
    if not isinstance(value, str) or not value:
        field = "secret" if "secret" in k else "secret_file"
        raise CredentialsError(f"{where} ({k['id']}): {field} must be a non-empty string, "
                               f"got {value!r}")
    if "secret" in k:
        secret = value.encode()
    else:
        f = Path(value)
        f = f if f.is_absolute() else base / f
        try:
            secret = f.read_bytes().strip()
        except OSError as exc:
            raise CredentialsError(f"{where} ({k['id']}): cannot read {f}: "
                                   f"{exc.strerror or exc}") from None
    if len(secret) < 32:
        raise CredentialsError(f"{where} ({k['id']}): the secret is {len(secret)} bytes; "
                               "use at least 32 (router token keygen makes one)")
    return secret
