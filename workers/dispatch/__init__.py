"""Dispatch scoring: which rider gets an order's offer (pure Python + numpy, no I/O)."""

#: The service dispatch workers register, and the channel that carries rider states to
#: them (here, not in worker.py, so that importing them loads no worker metrics).
SERVICE = "dispatch"
RIDER_CHANNEL = "dispatch:riders"

from .geo import Point, Projection, TravelModel, distance
from .grid import GridIndex, Hits
from .scoring import (DEFAULT_TRAVEL, DEFAULT_WEIGHTS, Candidate, Order, Rider, RiderIndex,
                      Stop, Weights, apply_insertion, greedy_nearest_idle, rank, score_riders)

__all__ = [
    "Candidate", "DEFAULT_TRAVEL", "DEFAULT_WEIGHTS", "GridIndex", "Hits", "Order", "Point",
    "Projection", "Rider", "RiderIndex", "Stop", "TravelModel", "Weights", "apply_insertion",
    "distance", "greedy_nearest_idle", "rank", "score_riders",
]
