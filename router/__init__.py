"""Order-notification router: a ZeroMQ ROUTER with a Cython hot path.

The SDK is :class:`router.client.Sender` and :class:`router.client.Endpoint` (blocking)
and their asyncio twins in :mod:`router.aio`; the server is :class:`router.server.Router`.
The wire protocol is in :mod:`router.protocol` and docs/PROTOCOL.md.
"""

__version__ = "0.1.0"
