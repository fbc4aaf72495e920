"""Ray Tune's vocabulary in the experiment file: every domain, stop rule, scheduler and
PBT mutation form is built by Ray Tune itself at validation (no Ray runtime), samples
inside its bounds, and what stays unsupported says so and names the alternative."""

import random

import numpy as np
import pytest
from ray.tune.search.hyperopt import HyperOptSearch

from raytune_suite.engine import registry
from raytune_suite.engine.outcomes import StopRules
from raytune_suite.errors import SpecError
from raytune_suite.experiment import validate
from raytune_suite.experiment.space import parse

TRAINABLE = "raytune_suite.training.trainable:train_classifier"  # any importable function


def spec(**fields):
    raw = {"name": "v", "trainable": TRAINABLE, "metric": "score", "mode": "max",
           "search_space": {"x": {"uniform": [0, 1]}}}
    raw.update(fields)
    return validate(raw)


# kind -> (args, inclusive bounds, integer?, step)
DOMAINS = {
    "qrandint": ([2, 12, 2], (2, 12), True, 2),
    "lograndint": ([1, 100], (1, 99), True, None),
    "qlograndint": ([4, 64, 4], (4, 64), True, 4),
    "randn": ([5.0, 2.0], None, False, None),
    "qrandn": ([0.0, 1.0, 0.5], None, False, 0.5),
    "qnormal": ([0.0, 1.0, 0.25], None, False, 0.25),
    "randint": ([1, 4], (1, 3), True, None),
    "quniform": ([0.0, 1.0, 0.25], (0.0, 1.0), False, 0.25),
}


@pytest.mark.parametrize("kind", list(DOMAINS))
def test_domain_samples_inside_its_bounds_with_ray(kind):
    args, bounds, integer, step = DOMAINS[kind]
    domain = parse({"x": {kind: args}}).to_tune()["x"]
    random.seed(0)
    np.random.seed(0)
    values = [domain.sample() for _ in range(300)]
    for v in values:
        if integer:
            assert float(v).is_integer(), (kind, v)
        if bounds:
            assert bounds[0] <= v <= bounds[1], (kind, v)
        if step:
            assert abs(v / step - round(v / step)) < 1e-9, (kind, v)
    if kind in ("randint", "qrandint", "quniform"):
        # Ray's bounds: randint excludes high, qrandint and quniform include it.
        assert (min(values), max(values)) == bounds


@pytest.mark.parametrize("kind", list(DOMAINS))
def test_domain_converts_for_hyperopt(kind):
    import hyperopt

    args, bounds, integer, _ = DOMAINS[kind]
    space = HyperOptSearch.convert_search_space(parse({"x": {kind: args}}).to_tune())
    rng = np.random.default_rng(0)
    for _ in range(100):
        v = hyperopt.pyll.stochastic.sample(space, rng=rng)["x"]
        if bounds:
            assert bounds[0] <= v <= bounds[1], (kind, v)


@pytest.mark.parametrize("kind", list(DOMAINS))
def test_validated_domain_builds_for_every_searcher(kind):
    args = DOMAINS[kind][0]
    for algo in ("random", "hyperopt"):
        registry.check(spec(search_space={"x": {kind: args}}, search={"algorithm": algo}))


def test_grid_search_is_an_alias_of_grid():
    s = spec(search_space={"x": {"grid_search": [1, 2, 3]}}, search={"algorithm": "grid"})
    assert dict(s.search_space.entries)["x"].kind == "grid"
    assert s.search_space.grid_points() == [{"x": 1}, {"x": 2}, {"x": 3}]
    crossed = spec(search_space={"x": {"grid_search": [1, 2, 3]}}, search={"algorithm": "random"})
    assert registry.param_space(crossed)["x"] == {"grid_search": [1, 2, 3]}


@pytest.mark.parametrize("kind, value", [
    ("qrandint", 13), ("qrandint", 1), ("lograndint", 100), ("qlograndint", 70),
    ("randint", 4), ("quniform", 0.6),
])
def test_pbt_clip_keeps_each_domain_inside_its_bounds(kind, value):
    args, bounds, integer, step = DOMAINS[kind]
    clipped = parse({"x": {kind: args}}).clip({"x": value})["x"]
    assert bounds[0] <= clipped <= bounds[1]
    if integer:
        assert isinstance(clipped, int)
    if step:
        assert abs(clipped / step - round(clipped / step)) < 1e-9


@pytest.mark.parametrize("raw, field, rule", [
    ({"x": {"uniform": [0, 20], "q": 2}}, "search_space.x", "quniform: [0, 20, 2]"),
    ({"x": {"qrandint": [1.5, 8, 2]}}, "search_space.x.qrandint", "must be integers"),
    ({"x": {"lograndint": [0, 8]}}, "search_space.x.lograndint", "low > 0"),
    ({"x": {"qrandn": [0, 1]}}, "search_space.x.qrandn", "[mean, sd, q]"),
    ({"x": {"choice": [{"uniform": [0, 1]}, 0.5]}}, "search_space.x.choice[0]",
     "cannot be a domain"),
    ({"x": {"choice": [{"a": 1, "g": {"grid": [1, 2]}}]}}, "search_space.x.choice[0].g",
     "grid cannot sit inside a conditional choice"),
    ({"x": {"sample_from": [1]}}, "search_space.x", "not supported"),
])
def test_malformed_domains_name_the_entry(raw, field, rule):
    with pytest.raises(SpecError) as info:
        parse(raw)
    assert info.value.field == field and rule in info.value.rule, str(info.value)


def test_a_domain_under_config_is_refused():
    with pytest.raises(SpecError) as info:
        spec(config={"lr": {"uniform": [0, 1]}})
    assert info.value.field == "config.lr" and "search_space.lr" in info.value.rule


def test_a_value_both_fixed_and_searched_is_refused():
    with pytest.raises(SpecError) as info:
        spec(config={"x": 0.3})
    assert info.value.field == "search_space.x" and "config.x" in info.value.rule
    # Distinct keys of one namespace may be fixed and searched side by side.
    spec(config={"opt": {"name": "sgd"}}, search_space={"opt": {"m": {"uniform": [0, 1]}}})


@pytest.mark.parametrize("field, value, rule", [
    ("scheduler", {"type": "bohb", "max_t": 3}, "not supported: BOHB needs"),
    ("scheduler", {"type": "pb2", "max_t": 3}, "not supported"),
    ("search", {"algorithm": "ax"}, "not supported"),
])
def test_unsupported_names_say_so_and_name_the_alternative(field, value, rule):
    with pytest.raises(SpecError) as info:
        spec(**{field: value})
    assert rule in str(info.value) and "use " in str(info.value)


def test_hyperband_and_time_attr_build():
    s = spec(scheduler={"type": "hyperband", "max_t": 9, "reduction_factor": 3,
                        "time_attr": "time_total_s"})
    registry.check(s)
    parts = registry.build(s)
    assert parts.scheduler._time_attr == "time_total_s"
    assert parts.stopper.limits == {"time_total_s": 9}


def test_stop_rules_follow_ray_and_the_mode_of_the_metric():
    s = spec(metric="mean_loss", mode="min",
             stop={"training_iteration": 7, "mean_loss": 0.1, "mean_accuracy": 0.9,
                   "done": True, "time_budget_s": 60})
    stop = registry.make_stopper(s)
    assert isinstance(stop, StopRules)
    assert not stop("t", {"training_iteration": 6, "mean_loss": 0.5})
    assert stop("t", {"training_iteration": 7, "mean_loss": 0.5})
    assert stop("t", {"training_iteration": 1, "mean_loss": 0.1})  # reached, going down
    assert not stop("t", {"training_iteration": 1, "mean_loss": float("nan")})
    assert stop("t", {"training_iteration": 1, "mean_accuracy": 0.95})  # Ray's >= rule
    assert s.stop.time_budget_s == 60


@pytest.mark.parametrize("stop, field", [
    ({"mean_loss": "low"}, "stop.mean_loss"), ({"done": False}, "stop.done"),
    ({"training_iteration": 0}, "stop.training_iteration"),
])
def test_bad_stop_rules(stop, field):
    with pytest.raises(SpecError) as info:
        spec(stop=stop)
    assert str(info.value).startswith(f"{field}: ")


def test_pbt_with_hyperparam_mutations_keeps_the_fixed_start():
    """Ray's pbt_function example: lr starts at 1e-4 for every trial, and PBT may move it
    anywhere in [1e-4, 0.02]; some_other_factor mutates between 1 and 2."""
    s = spec(trainable="ray.tune.examples.pbt_function:pbt_function",
             config={"lr": 0.0001, "some_other_factor": 1}, search_space=None,
             metric="mean_accuracy",
             scheduler={"type": "pbt", "max_t": 20, "perturbation_interval": 5,
                        "hyperparam_mutations": {"lr": {"uniform": [0.0001, 0.02]},
                                                 "some_other_factor": [1, 2]}})
    registry.check(s)
    parts = registry.build(s)
    assert parts.param_space == {"lr": 0.0001, "some_other_factor": 1}
    mutations = parts.scheduler._hyperparam_mutations
    assert mutations["some_other_factor"] == [1, 2]
    assert (mutations["lr"].lower, mutations["lr"].upper) == (0.0001, 0.02)
    assert parts.scheduler._custom_explore_fn({"lr": 0.5, "some_other_factor": 2}) == \
        {"lr": 0.02, "some_other_factor": 2}


def test_pbt_rules():
    with pytest.raises(SpecError) as info:
        spec(scheduler={"type": "pbt", "max_t": 4, "time_attr": "time_total_s"})
    assert info.value.field == "scheduler.time_attr"
    with pytest.raises(SpecError) as info:
        spec(scheduler={"type": "pbt", "max_t": 4, "hyperparam_mutations": {
            "o": {"choice": [{"a": 1}, {"a": 2}]}}})
    assert info.value.field == "scheduler.hyperparam_mutations.o"
    # The built-in trainable checkpoints every checkpoint.every epochs, so the interval
    # must be a multiple of it; a function trainable decides itself (checked at run time).
    with pytest.raises(SpecError) as info:
        validate({"name": "p", "trainable": "classifier", "metric": "val_loss", "mode": "min",
                  "config": {"dataset": "iris", "epochs": 6},
                  "search_space": {"lr": {"loguniform": [1e-4, 1e-1]}},
                  "scheduler": {"type": "pbt", "max_t": 6, "perturbation_interval": 3},
                  "checkpoint": {"every": 2}})
    assert info.value.field == "scheduler.perturbation_interval"
    spec(scheduler={"type": "pbt", "max_t": 6, "perturbation_interval": 3},
         checkpoint={"every": 2, "keep": 1})


def test_mutations_of_the_classifier_are_checked_against_its_keys():
    base = {"name": "p", "trainable": "classifier", "metric": "val_loss", "mode": "min",
            "config": {"dataset": "iris", "epochs": 6, "lr": 0.01},
            "scheduler": {"type": "pbt", "max_t": 6}}
    with pytest.raises(SpecError) as info:
        validate({**base, "scheduler": {**base["scheduler"],
                                        "hyperparam_mutations": {"lrr": [0.1, 0.2]}}})
    assert info.value.field == "scheduler.hyperparam_mutations.lrr"
    with pytest.raises(SpecError) as info:
        validate({**base, "scheduler": {**base["scheduler"], "hyperparam_mutations": {
            "momentum": {"uniform": [0.5, 1.5]}}}})
    assert info.value.field.startswith("scheduler.hyperparam_mutations.momentum")


def test_check_builds_without_starting_ray():
    import ray

    ray.shutdown()
    registry.check(spec(search_space={
        "o": {"choice": [{"name": "a", "m": {"uniform": [0, 1]}}, {"name": "b"}]},
        "n": {"qlograndint": [1, 64, 1]}}, search={"algorithm": "hyperopt"}))
    registry.check(spec(search_space={
        "o": {"choice": [{"name": "a", "m": {"qrandint": [1, 9, 2]}}, {"name": "b"}]}}))
    assert not ray.is_initialized()
