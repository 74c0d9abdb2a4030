"""File formats sampt reads and writes, without torch (importable by the light commands).

* :mod:`sampt.io.png`: the one rule for reading and writing mask PNGs (index and binary).
* :mod:`sampt.io.results`: the VOS result tables and ``results.json`` that ``sampt test`` and
  ``sampt eval`` both write.
* :mod:`sampt.io.atomic`: atomic file writing (temporary file + ``os.replace``).

Nothing is imported here, so that ``import sampt.io.png`` stays as light as that module.
"""
