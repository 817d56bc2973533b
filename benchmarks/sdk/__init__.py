"""``python -m benchmarks sdk``: the users' benchmark, this SDK against nats-py and redis-py."""
