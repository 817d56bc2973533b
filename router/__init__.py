"""Order-notification router: a ZeroMQ ROUTER with a Cython hot path.

The SDK is :class:`router.client.Sender` and :class:`router.client.Endpoint` (blocking)
and their asyncio twins in :mod:`router.aio`; the server is :class:`router.server.Router`.
The wire protocol is in :mod:`router.protocol` and docs/PROTOCOL.md.
"""

__version__ = "0.1.0"


class _NativeCoreHint:
    """Last on the import path: when ``router.core`` (the compiled extension built from
    ext/core.pyx) cannot be found, say how to build it instead of only 'No module'."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in ("router.core", "router.checks"):
            raise ImportError(
                f"the router's native core is not built ({name} is missing). Install the "
                "package with `pip install .` (or `pip install -e .` in a checkout), or "
                "build in place with `python setup.py build_ext --inplace`; this needs "
                "Cython and a C++ compiler.", name=name)
        return None


import sys as _sys  # noqa: E402

if not any(isinstance(f, type) and f.__name__ == "_NativeCoreHint" for f in _sys.meta_path):
    _sys.meta_path.append(_NativeCoreHint)
