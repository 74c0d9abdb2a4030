"""Metrics: DAVIS J&F (``functional_jf``: numpy only, no torch; ``jf``: the torchmetrics
``DavisJF``) and video AP (``vis_ap``). Nothing is imported here, so that the torch-free
modules stay light to import (``sampt eval`` uses only ``functional_jf``)."""
