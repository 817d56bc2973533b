"""pytest hooks for the benchmark suites (run by path: not under the default testpaths)."""

from __future__ import annotations

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (``item.rep_call``...), so that a
    module's fixture can tell whether a benchmark failed and keep its router's files."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
