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
def make_router():
    """Factory: start routers with extra `serve` flags; all are killed at teardown (their
    temporary directories are then removed or kept as pytest_runtest_makereport says)."""
    started: list[RouterProcess] = []

    def make(*args: str, env: dict | None = None) -> RouterProcess:
        r = RouterProcess(*args, env=env).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop(signal.SIGKILL)


#: (test id, directory) of the routers kept because a test failed while they existed.
_kept: list[tuple[str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Router directories: when a test fails (setup, call or teardown), keep those of every
    router that exists then and name them in the failure report, so that router.log and
    the journal can be read; after each teardown, remove those of the stopped routers
    not kept. A router still running (a module-scoped one) waits for a later teardown."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        fresh = [r for r in RouterProcess.on_disk if not r.keep_files]
        for r in fresh:
            r.keep_files = True
            _kept.append((item.nodeid, r.ipc_dir))
        if fresh:
            rep.sections.append(("router files kept", "\n".join(str(r.log_path)
                                                                for r in fresh)))
    if rep.when == "teardown":
        for r in list(RouterProcess.on_disk):
            if not r.keep_files and not r.running:
                r.remove_files()


def pytest_sessionfinish(session):
    """Kill the routers still running (a test that never stopped its own) and remove
    their directories unless kept."""
    for r in list(RouterProcess.on_disk):
        r.stop(signal.SIGKILL)
        if not r.keep_files:
            r.remove_files()


def pytest_terminal_summary(terminalreporter):
    """List the router directories kept for failed tests."""
    if _kept:
        terminalreporter.section("router files kept (router.log, data/)")
        for nodeid, path in _kept:
            terminalreporter.line(f"{path}  {nodeid}")


@pytest.fixture
def router(make_router) -> RouterProcess:
    """One router with default settings (fast heartbeats for quick liveness tests)."""
    return make_router("--heartbeat-ms", "500")


@pytest.fixture(params=["tcp", "ipc"])
def url(request, router) -> str:
    """The router's tcp and ipc endpoints in turn."""
    return router.url if request.param == "tcp" else router.ipc
