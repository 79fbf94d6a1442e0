"""The experiments: thin compositions of data -> splits -> trainer -> attacks -> metrics -> report.

Each module exposes ``Config`` (its settings, defaults and checks written
once), ``PRESETS`` where it has named variants, ``run(config)`` and
``summary_path(config)``; ``experiments/<name>.py`` runs it through
:func:`jaxpet.cli.main`.
"""
