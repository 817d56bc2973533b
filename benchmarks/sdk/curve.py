"""The ``sdk-curve`` contender: ``sdk`` through a router with credentials and CURVE.

Orchestrator side, :func:`secure`: the trial's key pairs (the router's, the
publisher's, the receiver's, as ``router keygen`` makes them) and a credentials file
with one principal per client, allowed exactly what the trial does: the publisher may
send NOTICE to the receiver's address, the receiver may bind that address; nothing
else. :func:`server_args` are the flags ``router serve`` then takes (docs/SECURITY.md).

The drivers are the users' own (benchmarks/drivers/users.py): the config entries
carry ``server_key`` and ``key``, which router.bench's Plan hands to the SDK's Sender
and Endpoint the way an application passes them.
"""

from __future__ import annotations

import os

#: Under the trial's directory: the credentials file and the key pairs.
CREDENTIALS = "credentials.toml"
CERTS = "certs"

#: Each principal is named as its client says HELLO (router/bench/clients.py names them
#: bench-pub-TAG-P and bench-recv-TAG-R), so it needs no ``names`` line. Key files are
#: read relative to the credentials file.
PRINCIPALS = """\
[[principal]]
name = "{publisher}"
public_keys = ["{certs}/publisher.key"]
roles = ["sender"]
send = {{NOTICE = ["{address}"]}}

[[principal]]
name = "{receiver}"
public_keys = ["{certs}/receiver.key"]
roles = ["endpoint"]
bind = ["{address}"]
"""


def secure(workdir: str, tag: str) -> tuple[dict, dict]:
    """Write the key pairs and the credentials file of a trial whose clients use
    ``tag``; return the (publisher, receiver) config entries that carry their keys."""
    from router.auth.keys import make_pair
    from router.bench.plan import Plan

    # absolute: the drivers run in the repository's root, not in the trial's directory
    certs = os.path.abspath(os.path.join(workdir, CERTS))
    server_key = str(make_pair(certs, "router")[0])
    keys = {role: str(make_pair(certs, role)[1]) for role in ("publisher", "receiver")}
    with open(os.path.join(workdir, CREDENTIALS), "w") as fh:
        fh.write(PRINCIPALS.format(publisher=f"bench-pub-{tag}-0",
                                   receiver=f"bench-recv-{tag}-0", certs=CERTS,
                                   address=Plan(mode="pub", url="", tag=tag).address(0)))
    return ({"server_key": server_key, "key": keys["publisher"]},
            {"server_key": server_key, "key": keys["receiver"]})


def server_args(workdir: str) -> list[str]:
    """``router serve`` flags for the files :func:`secure` wrote in ``workdir``."""
    workdir = os.path.abspath(workdir)
    return ["--credentials", os.path.join(workdir, CREDENTIALS),
            "--curve-secret-key", os.path.join(workdir, CERTS, "router.key_secret")]
