"""`router bench`: load a running router through this SDK and report what a user gets.

    router bench pub      --router tcp://127.0.0.1:5555 --count 200000 --size 200
    router bench reliable --publishers 2 --receivers 2 --duration 10 --rate 20000
    router bench request  --receivers 2 --window 32
    router bench sub      --tag run1            # receivers only, for a `pub --receivers 0`

The command starts its own client processes (multiprocessing, one SDK client each):
``--publishers`` senders and ``--receivers`` endpoints (in ``request`` mode, service
workers). Each publisher sends to every receiver's address in turn. A payload carries
its send time (CLOCK_MONOTONIC ns) and its index, so latency is receive time minus send
time, measured on this machine.

Modes:
  pub       best effort (NOTICE): sent, delivered, lost (best effort may be dropped)
  reliable  ORDER: every message is acked by its receiver and the publisher waits for
            its DELIVERED receipt (at most --window unconfirmed per publisher)
  request   request/reply through --receivers service workers (workers.service
            ServiceWorker, echoing the payload); latency is the round trip
  sub       receivers only, for a `pub`/`reliable` run elsewhere with the same --tag and
            --receivers 0 (which sends to bench:<tag>.0: run sub with --receivers 1);
            stops after --count messages, --duration seconds from the first, or Ctrl-C

The client loops hand messages to the SDK and take them from it in batches
(``send_many`` and ``recv_many`` in ``_send_batch``, ``_asend_batch`` and ``_take``),
and wait for DELIVERED receipts in one place (``_settle``, ``_asettle``).
"""

from .plan import HEAD, MODES, BenchError, Plan
from .process import client_role
from .run import check_plan, main, probe

__all__ = ["HEAD", "MODES", "BenchError", "Plan", "check_plan", "client_role", "main", "probe"]
