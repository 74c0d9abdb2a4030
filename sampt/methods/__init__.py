"""Video segmentation methods behind one interface (``sampt.methods.base.VosMethod``).

A method is a plain ``torch.nn.Module`` (no Lightning): given one video it streams per-frame
object logits to a consumer. ``sampt.methods.sam_pt`` is SAM-PT (and SAM-PT-reinit).
"""
