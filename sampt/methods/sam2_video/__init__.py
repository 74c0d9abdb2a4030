"""SAM 2's video predictor as a VOS method (``Sam2VideoMethod``, ``configs/method/sam2_video.yaml``)."""
from sampt.methods.sam2_video.method import Sam2Queries, Sam2VideoMethod

__all__ = ["Sam2Queries", "Sam2VideoMethod"]
