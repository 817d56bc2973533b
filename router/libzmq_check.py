"""Does the libzmq this process runs on let a peer choose its own routing id?

Stock libzmq (4.3.x, pyzmq's wheels included) gives a ROUTER's connection the routing
id the peer sent in its handshake (``ZMQ_ROUTING_ID``/``ZMQ_IDENTITY`` on the peer's
socket). For a router that faces untrusted peers that is a weakness, whatever
``ROUTER_HANDOVER`` is set to (docs/OPERATIONS-libzmq.md):

* a connection claiming an id that a live connection holds is parked and never read,
  and everything it sends stays in the router's memory;
* with handover on, the connection that lost its id is never closed (an fd leak);
* a connection claiming the id the ROUTER will assign next aborts the process when the
  next anonymous peer connects (``Assertion failed: ok (src/socket_base.cpp:2113)``).

``scripts/build-hardened-libzmq`` rebuilds pyzmq on a libzmq patched so that a ROUTER
assigns every id itself. :func:`honours_peer_routing_ids` tells the two apart at run
time, by asking the libzmq that pyzmq loaded (the one the native core uses too).
"""

from __future__ import annotations

import os

import zmq

#: The one startup warning of ``router serve`` when the probe says yes.
WARNING = ("libzmq accepts client-chosen routing ids: a hostile peer can exhaust memory "
           "or abort the router; run scripts/build-hardened-libzmq")

#: The id the probe's DEALER asks for; a hardened ROUTER reports one of its own instead.
PROBE_ID = b"order-router-peer-id-probe"


class ProbeError(RuntimeError):
    """The probe got no answer in time (the libzmq's behaviour is unknown)."""


def honours_peer_routing_ids(timeout: float = 2.0) -> bool:
    """True when a ROUTER on the loaded libzmq takes the routing id a peer chose.

    A ROUTER and a DEALER with ``ZMQ_ROUTING_ID`` set to :data:`PROBE_ID` meet over
    inproc in a context of their own (no I/O thread, no file, no port); the DEALER sends
    one message and the ROUTER's first frame says whose id the connection got. Waits at
    most ``timeout`` seconds; raises :class:`ProbeError` when nothing arrived by then.
    Both sockets and the context are closed before it returns or raises.
    """
    ctx = zmq.Context(io_threads=0)  # inproc needs no I/O thread
    router = dealer = None
    try:
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        endpoint = f"inproc://libzmq-check-{os.getpid()}-{id(router):x}"
        router.bind(endpoint)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.ROUTING_ID, PROBE_ID)
        dealer.connect(endpoint)
        dealer.send(b"probe")
        if not router.poll(int(timeout * 1000), zmq.POLLIN):
            raise ProbeError(f"no message through an inproc ROUTER within {timeout:g}s")
        routing_id, _body = router.recv_multipart(zmq.DONTWAIT)
        return routing_id == PROBE_ID
    finally:
        for sock in (dealer, router):
            if sock is not None:
                sock.close(linger=0)
        ctx.term()


def describe() -> str:
    """One line for logs and ``router --version``: hardened, stock, or unknown."""
    try:
        honoured = honours_peer_routing_ids()
    except (ProbeError, zmq.ZMQError) as exc:
        return f"unknown ({exc})"
    return "honoured (stock libzmq)" if honoured else "ignored (hardened libzmq)"
