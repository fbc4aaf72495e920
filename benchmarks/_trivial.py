"""A trainable that does no work, for measuring what the machinery around a trial costs.

Named in experiment files as ``trainable: _trivial:trivial`` (the benchmarks put this
folder on ``sys.path``). Like any user module outside site-packages, the suite ships it to
the workers by value; the benchmarks' raw Ray Tune sides register it the same way, so
both sides pickle the same function identically.
"""

import os

from ray import tune


def trivial(config: dict) -> None:
    """Report ``config["reports"]`` results (default 1) at once and return.

    Each result carries ``score`` (the metric of the benchmarks' experiments) and the
    worker's ``pid``, from which a benchmark counts the worker processes a run used.
    """
    for step in range(1, config.get("reports", 1) + 1):
        tune.report({"score": config["x"] * step, "pid": os.getpid()})
