"""Import point for the native core, with an error that says how to build it."""

try:
    from ._core import (  # noqa: F401
        Core, constants, cython_version, histogram_bounds, history_rows, libzmq_path,
        libzmq_version,
    )
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    if "_core" not in str(exc) and "router native core" not in str(exc):
        raise
    raise ImportError(
        f"the router's native core is not built ({exc}). Install the package with "
        "`pip install .` (or `pip install -e .` in a checkout), or build in place with "
        "`python setup.py build_ext --inplace`; this needs Cython and a C++ compiler."
    ) from exc

__all__ = ["Core", "constants", "cython_version", "histogram_bounds", "history_rows",
           "libzmq_path", "libzmq_version"]
