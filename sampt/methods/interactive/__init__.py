"""Interactive point correction: a per-video session that adds and removes points and objects."""
from sampt.methods.interactive.engine import (DECODE_RULES, CallReport, EmbeddingCache, Interaction,
                                              InteractiveSession, Point, TrackedPoint)

__all__ = ["DECODE_RULES", "CallReport", "EmbeddingCache", "Interaction", "InteractiveSession", "Point",
           "TrackedPoint"]
