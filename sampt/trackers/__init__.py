"""Point trackers behind one interface (``sampt.trackers.base.PointTracker``), named by their
class (``tracker_classes()``); importing this package imports the built-in ones."""
from sampt.trackers import cotracker, cotracker3, lk, pips, pips_plus_plus, raft, superglue, tapir, tapnet, trivial  # noqa: F401  (imports every built-in tracker)
from sampt.trackers.base import PointTracker, build_tracker, tracker_classes

__all__ = ["PointTracker", "build_tracker", "tracker_classes"]
