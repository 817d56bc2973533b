"""The hop benchmark: our router against a bare proxy and a pure-Python loop, all driven
by the same native sender and receiver processes (``python -m benchmarks hop``).

Kept free of imports: the contender programs here run as ``python -m
benchmarks.hop.proxy`` and ``python -m benchmarks.hop.pyloop``.
"""
