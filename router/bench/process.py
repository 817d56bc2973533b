"""One client process: which loop a role runs, and how it reports to the parent."""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

from .plan import Plan
from .control import Control
from .clients import run_publisher, run_receiver, run_requester, run_worker
from .aclients import _aio_publisher, _aio_receiver, _aio_requester

# ---------------------------------------------------------------------------------------
# One client process



ROLES = {
    ("blocking", "publisher"): run_publisher,
    ("blocking", "receiver"): run_receiver,
    ("blocking", "requester"): run_requester,
    ("blocking", "worker"): run_worker,
    ("asyncio", "publisher"): lambda *a: asyncio.run(_aio_publisher(*a)),
    ("asyncio", "receiver"): lambda *a: asyncio.run(_aio_receiver(*a)),
    ("asyncio", "requester"): lambda *a: asyncio.run(_aio_requester(*a)),
    ("asyncio", "worker"): run_worker,
}


def client_role(plan: Plan, kind: str) -> Callable:
    """The loop of a publisher/receiver in ``plan``'s mode and API."""
    if plan.mode == "request":
        kind = {"publisher": "requester", "receiver": "worker"}[kind]
    return ROLES[(plan.api, kind)]


def _child(plan: Plan, kind: str, index: int, ctl: Control, slot: int) -> None:
    """A client process: run its loop and put its result (or its error) on the queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        result = client_role(plan, kind)(plan, index, ctl, slot)
        if kind != "publisher":  # a publisher handed its figures before it held on
            ctl.results.put(result)
        ctl.results.put({"role": "exit", "slot": slot})
    except BaseException as exc:  # reported as one line by the parent
        ctl.results.put({"role": "error", "slot": slot,
                         "error": f"{kind} {index}: {type(exc).__name__}: {exc}"})
