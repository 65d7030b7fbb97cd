"""The audit's measures, one file each; :mod:`sftlab.audit.measures.registry` finds and runs them.

Each measure module defines ``MEASURE`` (:class:`sftlab.audit.measures.base.Measure`): its section (table
with intervals, HTML and Markdown, plots, headline findings), its sweep columns and its gate values. The
pure formulas stay in their own modules under :mod:`sftlab.audit` (``style``, ``diversity``, ``shift``,
``copying``, ``forgetting``, ``forecast``, ``task``) and :mod:`sftlab.world.judge`, with their tests.
"""
