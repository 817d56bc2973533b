"""Per-operation latency suites and timed batches for pytest-benchmark.

``benchmarks/test_latency.py`` (blocking SDK), ``benchmarks/test_latency_aio.py``
(asyncio SDK) and ``benchmarks/test_throughput_batch.py`` time one operation per round
against a live ``router serve`` started once per module; ``benchmarks/test_latency_gate.py``
checks that ``--benchmark-compare-fail`` catches a slower path. What is shared lives in
:mod:`benchmarks.latency.live`; ``python -m benchmarks latency-spread`` runs the suite
several times and reports how much each median moved.
"""
