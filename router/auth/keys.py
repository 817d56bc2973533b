"""CURVE key pairs: made by ``router keygen``, read by the router, the SDK and the tools.

The files are pyzmq's certificates (``zmq.auth.create_certificates``): ``NAME.key``
holds the public key (hand it out), ``NAME.key_secret`` both halves (keep it; mode
0600). Keys are Z85 text, 40 characters.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85


class KeyFileError(ValueError):
    """A key or key file is missing, unreadable or malformed; the message names it."""


def make_pair(directory: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (mode 0600) in ``directory`` (created
    if missing); refuse to overwrite unless ``force``. Returns (public, secret) paths."""
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r}: use a plain file name such as router or orders-api")
    d = Path(directory)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if not force and (public.exists() or secret.exists()):
        raise KeyFileError(f"{public} or {secret} exists: pick another name, or --force to "
                        "replace it (clients holding the old public key stop connecting)")
    try:
        d.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o077)  # the secret file is never readable by others, not even briefly
        try:
            zmq.auth.create_certificates(str(d), name)
        finally:
            os.umask(old)
        os.chmod(secret, 0o600)
        os.chmod(public, 0o644)
    except OSError as exc:
        raise KeyFileError(f"cannot write keys in {d}: {exc.strerror or exc}") from None
    return public, secret


def check_z85(key: str, what: str = "key") -> str:
    """``key`` if it is a 40-character Z85 CURVE key; else KeyFileError naming ``what``."""
    if not isinstance(key, str) or len(key) != 40:
        raise KeyFileError(f"{what}: a CURVE key is 40 characters of Z85 text, got "
                        f"{str(key)[:50]!r}")
    try:
        z85.decode(key.encode("ascii"))
    except (ValueError, KeyError, UnicodeEncodeError):
        raise KeyFileError(f"{what}: {key!r} is not Z85 text") from None
    return key


def _load(path: str | Path) -> tuple[bytes | None, bytes | None]:
    try:
        return zmq.auth.load_certificate(str(path))
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, IndexError) as exc:
        raise KeyFileError(f"{path} is not a key file made by `router keygen` ({exc})") from None


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 bytes from a secret certificate (``NAME.key_secret``)."""
    public, secret = _load(path)
    if not secret:
        raise KeyFileError(f"{path} holds no secret key: give the NAME.key_secret file, "
                        "not the public NAME.key")
    return public, secret


def load_public(spec: str | Path, base: Path | None = None) -> str:
    """A public key, Z85 text: ``spec`` itself when it is one, else read from the
    certificate file it names (relative to ``base``)."""
    text = str(spec)
    if len(text) == 40 and not Path(text).exists():
        return check_z85(text)
    path = Path(text)
    if base is not None and not path.is_absolute():
        path = base / path
    public, _ = _load(path)
    if not public:
        raise KeyFileError(f"{path} holds no public key")
    return public.decode("ascii")


def client_options(server_key: str | Path | None = None,
                   key: str | Path | tuple[str, str] | None = None,
                   plain: tuple[str, str] | None = None) -> dict[int, bytes]:
    """Socket options for a client of an authenticated router: CURVE with the
    router's public key (Z85 or its ``.key`` file) and this client's pair (its
    ``.key_secret`` file, or ``(public, secret)`` Z85); or PLAIN ``(name, password)``.
    Empty when neither is given (an open router)."""
    if plain is not None:
        if server_key is not None or key is not None:
            raise KeyFileError("give CURVE keys or a PLAIN (name, password), not both")
        name, password = plain
        return {zmq.PLAIN_USERNAME: name.encode(), zmq.PLAIN_PASSWORD: password.encode()}
    if server_key is None and key is None:
        return {}
    if server_key is None or key is None:
        raise KeyFileError("CURVE needs both server_key (the router's public key) and "
                           "key (this client's secret key file)")
    if isinstance(key, tuple):
        public, secret = (check_z85(k, "client key").encode() for k in key)
    else:
        public, secret = load_secret(key)
    return {zmq.CURVE_SERVERKEY: load_public(server_key).encode(),
            zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}
