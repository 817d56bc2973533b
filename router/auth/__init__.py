"""Trust: who a connection is and what it may do (docs/PROTOCOL.md §11, docs/SECURITY.md).

* :mod:`router.auth.keys`: CURVE key pairs (``router keygen``), loading them.
* :mod:`router.auth.grants`: rights (:class:`Action`), name patterns, principals.
* :mod:`router.auth.credentials`: the TOML credentials file, checked and compiled.
* :mod:`router.auth.zap`: the ZAP handler (RFC 27) the router runs for CURVE.
* :mod:`router.auth.tokens`: signed, expiring app tokens (the gateway verifies them).

Nothing here imports the router's application modules: the router, the gateway and the
SDK all use it.
"""
