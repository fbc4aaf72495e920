"""Name -> factory registries for searchers and schedulers.

Factories import Ray lazily, so the registries (and the names they hold) are
available to the spec validator before Ray starts. Metric and mode are *not*
passed here: the runner sets them once, on ``TuneConfig``, and Ray hands them on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    from raytune_suite.spec import ExperimentSpec


# Concurrency is limited here, not with TuneConfig(max_concurrent_trials): Ray ignores
# that setting (with only a warning) when handed a BasicVariantGenerator instance.


def _basic_variant(spec: "ExperimentSpec"):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search.seed,
                                 max_concurrent=spec.search.max_concurrent or 0)


def _hyperopt(spec: "ExperimentSpec"):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    searcher = HyperOptSearch(
        n_initial_points=spec.search.n_initial_points,
        random_state_seed=spec.search.seed,
    )
    if spec.search.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.search.max_concurrent)
    return searcher


SEARCHERS: dict[str, Callable[["ExperimentSpec"], Any]] = {
    "grid": _basic_variant,
    "random": _basic_variant,
    "hyperopt": _hyperopt,
}


def _fifo(spec: "ExperimentSpec"):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _asha(spec: "ExperimentSpec"):
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=s.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
        brackets=s.brackets,
    )


def _pbt(spec: "ExperimentSpec"):
    from ray.tune.schedulers import PopulationBasedTraining

    s = spec.scheduler
    return PopulationBasedTraining(
        time_attr="training_iteration",
        perturbation_interval=s.perturbation_interval,
        hyperparam_mutations=spec.search_space.pbt_mutations(),
        quantile_fraction=s.quantile_fraction,
        resample_probability=s.resample_probability,
        synch=s.synch,
        custom_explore_fn=spec.search_space.clip,
    )


SCHEDULERS: dict[str, Callable[["ExperimentSpec"], Any]] = {
    "fifo": _fifo,
    "asha": _asha,
    "pbt": _pbt,
}


def make_searcher(spec: "ExperimentSpec"):
    """The search algorithm named by ``search.algorithm``."""
    return SEARCHERS[spec.search.algorithm](spec)


def make_scheduler(spec: "ExperimentSpec"):
    """The trial scheduler named by ``scheduler.type``."""
    return SCHEDULERS[spec.scheduler.type](spec)


def param_space(spec: "ExperimentSpec") -> dict[str, Any]:
    """Fixed ``config`` values with the searched entries merged over them."""
    searched = (spec.search_space.to_grid() if spec.search.algorithm == "grid"
                else spec.search_space.to_tune())
    return _merge(dict(spec.config), searched)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
