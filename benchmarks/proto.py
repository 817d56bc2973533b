"""The wire protocol table, loaded for the benchmarks.

``router/protocol.py`` is the one table of constants and layouts. The benchmarks load
that file directly (not through the ``router`` package) so that a half-built router
package cannot stop the proxy and pure-Python baselines from running. Nothing here
redefines a protocol number.
"""

from __future__ import annotations

import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PROTOCOL_PATH = os.path.join(ROOT, "router", "protocol.py")


def _load():
    name = "_bench_router_protocol"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PROTOCOL_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the protocol table from {PROTOCOL_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


protocol = _load()
