"""The durability benchmark: what the journal, a backlog resume and the metrics endpoint
cost (``python -m benchmarks durability``)."""
