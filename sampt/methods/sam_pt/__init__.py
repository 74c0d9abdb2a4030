"""SAM-PT: query points, point tracking, per-frame SAM prompting (and SAM-PT-reinit).

``method.SamPtMethod`` is the ``VosMethod``; ``options`` its configuration; ``pipeline`` the
plain per-video run; ``reinit`` the window-by-window reinit run and ``reinit_rules`` its choice
of query frames; ``query_points`` and ``patch_matching`` the point sampling and filtering.
"""
