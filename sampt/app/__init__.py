"""`sampt app`: a local web page over the interaction engine."""
