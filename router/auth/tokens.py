"""App tokens: a signed, expiring statement that the holder is one address.

Phones and browsers hold no CURVE keys; they present a token to the gateway, which binds
the token's address for them. A token is a JWT signed with HMAC-SHA256 (PyJWT): ``sub``
is the address (``user:7``), ``aud`` the router's audience, ``iat`` and ``exp`` its
lifetime, and the header's ``kid`` names the key that signed it. Keys rotate by listing
two: the first signs, every listed one verifies (credentials file, ``[tokens]``).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jwt

from router.auth.credentials import TokenKey
from router.session import check_address

ALGORITHM = "HS256"
#: Clock difference tolerated between the issuer and the verifier, seconds.
LEEWAY_S = 30
#: The longest lifetime a token may be given (ten years): a bound, not a policy.
MAX_TTL_S = 10 * 365 * 86400


class TokenError(ValueError):
    """A token was refused. ``reason`` is one of: ``expired``, ``bad_signature``,
    ``unknown_key``, ``wrong_audience``, ``malformed``, ``bad_address``, ``no_keys``."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def issue(address: str, ttl_s: float, keys: Sequence[TokenKey], audience: str,
          now: float | None = None, **claims: Any) -> str:
    """A token for ``address`` valid ``ttl_s`` seconds, signed with the first key."""
    if not keys:
        raise TokenError("no_keys", "no token keys configured: add [tokens] keys to the "
                         "credentials file")
    try:
        check_address(address)
    except ValueError as exc:
        raise TokenError("bad_address", f"cannot issue a token: {exc}") from None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) \
            or not 0 < ttl_s < MAX_TTL_S:
        raise TokenError("malformed", f"ttl must be a number of seconds in (0, "
                         f"{MAX_TTL_S}), got {ttl_s!r}")
    now = time.time() if now is None else now
    body = {**claims, "sub": address, "aud": audience, "iat": int(now),
            "exp": int(now + ttl_s)}
    return jwt.encode(body, keys[0].secret, algorithm=ALGORITHM, headers={"kid": keys[0].id})


def verify(token: str, keys: Sequence[TokenKey], audience: str) -> dict[str, Any]:
    """The token's claims if it is well formed, signed by a listed key, for
    ``audience``, unexpired, and names a valid address; else TokenError."""
    if not keys:
        raise TokenError("no_keys", "no token keys configured")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("malformed", "not a token (expected a JWT: three base64 parts)") from None
    key = next((k for k in keys if k.id == header.get("kid")), None)
    if key is None:
        raise TokenError("unknown_key", f"token signed with key {header.get('kid')!r}, "
                         "which this service does not have (rotated out?)")
    try:
        claims = jwt.decode(token, key.secret, algorithms=[ALGORITHM], audience=audience,
                            leeway=LEEWAY_S, options={"require": ["exp", "sub", "aud"]})
    except jwt.ExpiredSignatureError:
        raise TokenError("expired", "token expired: get a new one") from None
    except jwt.InvalidAudienceError:
        raise TokenError("wrong_audience", f"token is not for {audience!r}") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad_signature", "token signature does not verify (forged, or "
                         "signed with another secret)") from None
    except jwt.PyJWTError as exc:
        raise TokenError("malformed", f"token refused: {exc}") from None
    try:
        check_address(claims["sub"])
    except (ValueError, TypeError) as exc:
        raise TokenError("bad_address", f"token subject: {exc}") from None
    return claims
