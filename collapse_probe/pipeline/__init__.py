"""What the CLI runs: a source (checkpoint, folder, embedding file) plus data -> results -> files.

:mod:`.checkpoints` loads and probes checkpoints; :mod:`.outputs` writes and reads what the
commands save.
"""
