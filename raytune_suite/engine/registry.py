"""Name -> factory registries for searchers and schedulers, and :func:`check`, which
builds everything an experiment file describes without starting Ray.

Factories import Ray lazily. Metric and mode are *not* passed to the factories: the
runner sets them once, on ``TuneConfig``, and Ray hands them on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from raytune_suite.errors import SpecError
from raytune_suite.experiment import ExperimentSpec, mutation_space

# Concurrency is limited here, not with TuneConfig(max_concurrent_trials): Ray ignores
# that setting (with only a warning) when handed a BasicVariantGenerator instance.


def _basic_variant(spec: ExperimentSpec):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=spec.search.seed,
                                 max_concurrent=spec.search.max_concurrent or 0)


def _hyperopt(spec: ExperimentSpec):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.hyperopt import HyperOptSearch

    searcher = HyperOptSearch(
        n_initial_points=spec.search.n_initial_points,
        random_state_seed=spec.search.seed,
    )
    if spec.search.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.search.max_concurrent)
    return searcher


def _optuna(spec: ExperimentSpec):
    """Ray Tune's OptunaSearch with Optuna's TPE sampler, seeded: the first
    ``n_initial_points`` trials at random, then TPE (MOTPE with several objectives; NSGA-II
    would spend whole generations of ~50 trials at random, more than a search here has)."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line
    sampler = optuna.samplers.TPESampler(seed=spec.search.seed,
                                         n_startup_trials=spec.search.n_initial_points)
    if spec.objectives:
        # Several objectives: Ray hands a searcher only one metric (TuneConfig's), so the
        # searcher gets every metric and its space here, and the Tuner's param_space holds
        # only the fixed config (param_space below).
        searcher = OptunaSearch(space=OptunaSearch.convert_search_space(
                                    spec.search_space.to_tune()),
                                metric=spec.metrics, mode=[m for _, m in spec.all_objectives],
                                sampler=sampler)
    else:
        searcher = OptunaSearch(sampler=sampler)
    if spec.search.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.search.max_concurrent)
    return searcher


def written_order_grid(spec: ExperimentSpec) -> bool:
    """The grid searcher hands Ray Tune the combinations in the file's order (see
    ``engine.grid``), except under PBT: Ray's PBT refuses any searcher but its own
    variant generator, so there the grid is Ray's ``grid_search`` (nested by name; PBT
    starts the population together when the resources allow)."""
    return spec.search.algorithm == "grid" and spec.scheduler.type != "pbt"


def _grid(spec: ExperimentSpec):
    """Every combination of the file's entries, in the order the file writes them (see
    ``engine.grid``), ``num_samples`` times over."""
    if not written_order_grid(spec):
        return _basic_variant(spec)
    from ray.tune.search import ConcurrencyLimiter

    from raytune_suite.engine.grid import WrittenOrderGrid

    searcher = WrittenOrderGrid(spec.search_space.grid_points(), spec.search.num_samples)
    if spec.search.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=spec.search.max_concurrent)
    return searcher


SEARCHERS: dict[str, Callable[[ExperimentSpec], Any]] = {
    "grid": _grid,
    "random": _basic_variant,
    "hyperopt": _hyperopt,
    "optuna": _optuna,
}


def _fifo(spec: ExperimentSpec):
    from raytune_suite.engine.outcomes import FIFOScheduler

    return FIFOScheduler()


def _asha(spec: ExperimentSpec):
    from raytune_suite.engine.outcomes import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(time_attr=s.time_attr, max_t=s.max_t, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, brackets=s.brackets)


def _hyperband(spec: ExperimentSpec):
    from raytune_suite.engine.outcomes import HyperBandScheduler

    s = spec.scheduler
    return HyperBandScheduler(time_attr=s.time_attr, max_t=s.max_t,
                              reduction_factor=s.reduction_factor,
                              stop_last_trials=s.stop_last_trials)


def _pbt(spec: ExperimentSpec):
    from raytune_suite.engine.pbt import ExploitSafePBT

    s = spec.scheduler
    mutations = mutation_space(spec)
    return ExploitSafePBT(
        time_attr="training_iteration",
        perturbation_interval=s.perturbation_interval,
        burn_in_period=s.burn_in_period,
        hyperparam_mutations=mutations.pbt_mutations(),
        quantile_fraction=s.quantile_fraction,
        resample_probability=s.resample_probability,
        synch=s.synch,
        custom_explore_fn=mutations.clip,
    )


SCHEDULERS: dict[str, Callable[[ExperimentSpec], Any]] = {
    "fifo": _fifo,
    "asha": _asha,
    "hyperband": _hyperband,
    "pbt": _pbt,
}


def tune_num_samples(spec: ExperimentSpec) -> int:
    """``TuneConfig.num_samples``: with the grid searcher every trial is a sample (Ray
    multiplies its own ``grid_search`` entries by ``num_samples``; this grid's searcher
    suggests each combination itself)."""
    if written_order_grid(spec):
        from raytune_suite.engine._epochs import count_trials

        return count_trials(spec)
    return spec.search.num_samples


def make_searcher(spec: ExperimentSpec):
    """The search algorithm named by ``search.algorithm``."""
    return SEARCHERS[spec.search.algorithm](spec)


def make_scheduler(spec: ExperimentSpec):
    """The trial scheduler named by ``scheduler.type``."""
    return SCHEDULERS[spec.scheduler.type](spec)


def make_stopper(spec: ExperimentSpec):
    """When a trial ends by the file's own rules (``scheduler.max_t`` and ``stop``)."""
    from raytune_suite.engine.outcomes import StopRules

    limits = {}
    if spec.max_t:
        limits[spec.time_attr] = spec.max_t
    if spec.stop.training_iteration:
        limits["training_iteration"] = min(limits.get("training_iteration", 1 << 62),
                                           spec.stop.training_iteration)
    return StopRules(limits, spec.stop.thresholds, spec.metric, spec.mode)


def param_space(spec: ExperimentSpec) -> dict[str, Any]:
    """Fixed ``config`` values with the searched entries merged over them (a
    multi-objective searcher holds the searched entries itself: see ``_optuna``)."""
    if spec.objectives:
        return dict(spec.config)
    if written_order_grid(spec):
        return dict(spec.config)  # the grid searcher suggests every searched entry itself
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


@dataclass
class TuneParts:
    """What a ``tune.Tuner`` is built from, besides the trainable and the callbacks."""

    searcher: Any
    scheduler: Any
    param_space: dict[str, Any]
    stopper: Any


def build(spec: ExperimentSpec) -> TuneParts:
    """Fresh Ray Tune objects for one ``tune.Tuner`` (each Tuner needs its own: Ray
    refuses a searcher or scheduler whose metric or space is already set)."""
    return TuneParts(make_searcher(spec), make_scheduler(spec), param_space(spec),
                     make_stopper(spec))


def check(spec: ExperimentSpec) -> None:
    """Build what an experiment file describes and let Ray Tune check it, as ``Tuner``
    will, without starting Ray: a file that validates also runs.

    Raises:
        SpecError: naming the part Ray Tune refused and its reason.
    """
    space = param_space(spec)
    try:
        searcher = make_searcher(spec)  # a multi-objective one converts its space here
        searcher.set_search_properties(spec.metric, spec.mode, space)
    except (ValueError, TypeError, KeyError) as e:
        raise SpecError("search_space", f"the {spec.search.algorithm} searcher cannot use "
                                        f"this space ({_first_line(e)})", "see above") from None
    _check_sample(spec, space)
    try:
        make_scheduler(spec).set_search_properties(spec.metric, spec.mode)
        make_stopper(spec)
    except (ValueError, TypeError) as e:
        raise SpecError("scheduler", f"Ray Tune refuses this {spec.scheduler.type} scheduler "
                                     f"({_first_line(e)})", spec.scheduler.type) from None


def _check_sample(spec: ExperimentSpec, space: dict[str, Any]) -> None:
    """Resolve one config the way the random/grid searcher will, and make sure no
    domain is left for the trainable to receive as an object or a mapping."""
    if spec.search.algorithm in ("hyperopt", "optuna"):
        return  # HyperOptSearch converted the whole space above, branches included
    from ray.tune.search.sample import Domain
    from ray.tune.search.variant_generator import generate_variants

    try:
        _, config = next(iter(generate_variants(space)))
    except (ValueError, TypeError) as e:
        raise SpecError("search_space", f"Ray Tune cannot sample this space "
                                        f"({_first_line(e)})", "see above") from None
    left = _find(config, lambda v: isinstance(v, Domain))
    if left:
        raise SpecError(f"search_space.{left}", "Ray Tune's random/grid searcher leaves "
                                                "this domain unsampled", "a nested domain")


def _find(value: Any, test, path: str = "") -> str:
    if test(value):
        return path or "<root>"
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find(v, test, f"{path}.{k}" if path else str(k))
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _find(v, test, f"{path}[{i}]")
            if found:
                return found
    return ""


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
