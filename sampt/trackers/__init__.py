"""Point trackers behind one interface (``sampt.trackers.base.PointTracker``), by name from
``TRACKERS``: importing this package registers the built-in ones."""
from sampt.trackers import cotracker, cotracker3, lk, pips, pips_plus_plus, raft, superglue, tapir, tapnet, trivial  # noqa: F401  (registration)
from sampt.trackers.base import TRACKERS, PointTracker, build_tracker

__all__ = ["TRACKERS", "PointTracker", "build_tracker"]
