"""The M-STaR recipe: ``loop.py`` runs the stages in the order they run; each stage is a function over records
that takes its config section (``warmup.py``, ``prm_stage.py``, ``iteration.py`` with ``sample.py`` and
``select.py``, ``monitor.py``, ``temperature.py``, ``pseudo.py``); ``run_dir.py`` holds the run directory,
console and loggers, ``context.py`` what the stages share, ``prompts.py`` a run's prompts."""
