"""The load drivers: native loops (``loadgen.pyx``, built by ``build.py``) and the
driver programs the orchestrators start, one process per sender or receiver
(``hop.py``, ``durability.py``; sockets and handshake in ``sockets.py``)."""
