"""Fixtures: real router processes on loopback/ipc (support.RouterProcess).

Every router here is a separate `python -m router serve` process; tests talk to it over
tcp://127.0.0.1 or ipc:// and stop it with SIGTERM (or SIGKILL where a test says so).
"""

from __future__ import annotations

import signal

import pytest

# Helpers live in support.py; test_cli.py, test_demo.py, test_hostile.py and
# hostile_load.py still import these four from here.
from support import ROOT, Peer, RouterProcess, free_port  # noqa: F401


@pytest.fixture
def make_router(request):
    """Factory: start routers with extra `serve` flags; all are stopped at teardown and
    their temporary directories removed if the test passed."""
    started: list[RouterProcess] = []

    def make(*args: str, env: dict | None = None) -> RouterProcess:
        r = RouterProcess(*args, env=env).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop(signal.SIGKILL)
    # A failed test keeps its routers' directories (router.log, journal) to read.
    rep = getattr(request.node, "rep_call", None)
    for r in started:
        if rep is not None and rep.passed:
            r.remove_files()
        else:
            print(f"router files kept: {r.ipc_dir}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell at teardown
    whether the test passed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def router(make_router) -> RouterProcess:
    """One router with default settings (fast heartbeats for quick liveness tests)."""
    return make_router("--heartbeat-ms", "500")


@pytest.fixture(params=["tcp", "ipc"])
def url(request, router) -> str:
    """The router's tcp and ipc endpoints in turn."""
    return router.url if request.param == "tcp" else router.ipc
