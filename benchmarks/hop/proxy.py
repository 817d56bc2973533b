"""Contender (a): the bare hop, ``zmq.proxy(ROUTER frontend, DEALER backend)``.

    python -m benchmarks.hop.proxy --frontend tcp://127.0.0.1:5001 --backend tcp://127.0.0.1:5002

Senders connect DEALERs to the frontend, receivers connect DEALERs to the backend; a
receiver gets [sender identity][SEND header][payload]. Prints READY once both are bound.
"""

from __future__ import annotations

import argparse
import signal
import sys

import zmq
import zmq.auth


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontend", required=True, help="ROUTER endpoint to bind")
    parser.add_argument("--backend", required=True, help="DEALER endpoint to bind")
    parser.add_argument("--curve-secret-key", metavar="FILE",
                        help="serve CURVE on both sockets with this secret key file (any "
                             "client key accepted: libzmq's encryption cost alone)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = zmq.Context()
    frontend = ctx.socket(zmq.ROUTER)
    backend = ctx.socket(zmq.DEALER)
    for sock in (frontend, backend):
        sock.linger = 0
        if args.curve_secret_key:
            public, secret = zmq.auth.load_certificate(args.curve_secret_key)
            sock.curve_secretkey, sock.curve_publickey = secret, public
            sock.curve_server = True
    frontend.bind(args.frontend)
    backend.bind(args.backend)
    print("READY", flush=True)
    try:
        zmq.proxy(frontend, backend)
    except (KeyboardInterrupt, SystemExit, zmq.ContextTerminated):
        pass
    finally:
        frontend.close(0)
        backend.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
