"""Training remedies as plug-ins: one file per remedy (its settings, stage, builder and description), composed by
:mod:`sftlab.train.remedies.registry`. See docs/architecture.md, "How to add a remedy"."""
