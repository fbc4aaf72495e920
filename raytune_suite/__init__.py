"""raytune-suite: one experiment file -> a Ray Tune search -> MLflow.

Public API: :func:`load_spec`, :func:`run_experiment`, :class:`ExperimentSpec`.
"""

import os

# Under `uv run`, Ray 2.60 would package the working directory and build a fresh venv
# for every worker. Local runs and `ray start --head` clusters share this environment
# already, so that is minutes of wasted start-up (and needs the network). Job
# submission ships its environment explicitly instead. Set the variable to 1 to opt in.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from raytune_suite.errors import CheckpointError, SpecError  # noqa: E402
from raytune_suite.experiment import ExperimentSpec, load_spec  # noqa: E402


def run_experiment(*args, **kwargs):
    """See :func:`raytune_suite.engine.runner.run_experiment` (imported lazily: it needs Ray)."""
    from raytune_suite.engine.runner import run_experiment as _run

    return _run(*args, **kwargs)


__all__ = ["CheckpointError", "ExperimentSpec", "SpecError", "load_spec", "run_experiment"]
