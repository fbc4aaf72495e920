"""Search-space entries -> Ray Tune domains, HyperOpt spaces and PBT mutations."""

import random

import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.hyperopt import HyperOptSearch
from ray.tune.search.sample import Categorical, Float, Integer

from raytune_suite.engine import registry as algorithms
from raytune_suite.experiment.space import parse
from raytune_suite.experiment import validate

SPACE = {
    "lr": {"loguniform": [1e-4, 1e-1]},
    "wd": {"qloguniform": [1e-6, 1e-2, 1e-6]},
    "dropout": {"uniform": [0.0, 0.5]},
    "width": {"quniform": [0.25, 1.0, 0.25]},
    "layers": {"randint": [1, 4]},
    "noise": {"normal": [0.0, 0.1]},
    "batch_size": {"choice": [32, 64]},
    "optimizer": {"choice": [
        {"name": "sgd", "momentum": {"uniform": [0.8, 0.99]}},
        {"name": "adam"},
    ]},
    "schedule": {"gamma": {"uniform": [0.1, 0.5]}},  # a namespace
}


def test_every_domain_converts():
    tuned = parse(SPACE).to_tune()
    assert isinstance(tuned["lr"], Float) and tuned["lr"].lower == 1e-4
    assert isinstance(tuned["layers"], Integer) and (tuned["layers"].lower,
                                                     tuned["layers"].upper) == (1, 4)
    assert isinstance(tuned["batch_size"], Categorical)
    assert tuned["batch_size"].categories == [32, 64]
    assert isinstance(tuned["schedule"]["gamma"], Float)
    sgd = tuned["optimizer"].categories[0]
    assert sgd["name"] == "sgd" and isinstance(sgd["momentum"], Float)


def test_samples_stay_in_range():
    tuned = parse(SPACE).to_tune()
    random.seed(0)
    for _ in range(200):
        assert 1e-4 <= tuned["lr"].sample() <= 1e-1
        assert tuned["width"].sample() in (0.25, 0.5, 0.75, 1.0)
        assert tuned["layers"].sample() in (1, 2, 3)


def test_conditional_space_converts_to_hyperopt_and_samples_branches():
    """A choice of mappings works with HyperOpt: momentum only on the sgd branch."""
    import hyperopt

    hp_space = HyperOptSearch.convert_search_space(parse(SPACE).to_tune())
    names = set()
    for seed in range(30):
        sample = hyperopt.pyll.stochastic.sample(hp_space, rng=__import__("numpy").random
                                                 .default_rng(seed))
        opt = sample["optimizer"]
        names.add(opt["name"])
        assert ("momentum" in opt) == (opt["name"] == "sgd")
        if "momentum" in opt:
            assert 0.8 <= opt["momentum"] <= 0.99
    assert names == {"sgd", "adam"}


def _grid_spec(search_space: dict, **search) -> object:
    return validate({"name": "g", "trainable": "classifier", "config": {"dataset": "iris"},
                     "metric": "val_accuracy", "mode": "max",
                     "search": {"algorithm": "grid", **search}, "search_space": search_space})


def _suggestions(searcher) -> list:
    out = []
    while (point := searcher.suggest(f"t{len(out)}")) != Searcher.FINISHED:
        out.append(point)
    return out


def test_grid_searcher_runs_the_loops_in_the_order_the_file_writes_them():
    # lr written first: the outer loop, although Ray's grid_search would nest by name
    # (batch_size fastest, then lr, then optimizer.momentum outermost)
    spec = _grid_spec({"lr": {"grid": [1e-2, 1e-4]}, "batch_size": {"choice": [128, 32]},
                       "optimizer": {"momentum": {"grid": [0.9, 0.5]}}}, num_samples=2)
    space = algorithms.param_space(spec)
    assert space["dataset"] == "iris" and "lr" not in space  # the searcher suggests those
    assert algorithms.tune_num_samples(spec) == 16
    points = _suggestions(algorithms.make_searcher(spec))
    assert points[:4] == [{"lr": 1e-2, "batch_size": 128, "optimizer": {"momentum": 0.9}},
                          {"lr": 1e-2, "batch_size": 128, "optimizer": {"momentum": 0.5}},
                          {"lr": 1e-2, "batch_size": 32, "optimizer": {"momentum": 0.9}},
                          {"lr": 1e-2, "batch_size": 32, "optimizer": {"momentum": 0.5}}]
    assert points[4]["lr"] == 1e-4 and len(points) == 16 and points[8:] == points[:8]


def test_grid_under_pbt_is_rays_own_grid_search():
    # Ray's PBT refuses any searcher but its variant generator: the population is Ray's
    # grid_search there (nested by name), still every combination
    spec = validate({"name": "g", "trainable": "classifier", "config": {"dataset": "iris",
                                                                        "epochs": 4},
                     "metric": "val_accuracy", "mode": "max", "search": {"algorithm": "grid"},
                     "search_space": {"lr": {"grid": [1e-3, 1e-2]},
                                      "batch_size": {"choice": [32, 64]}},
                     "scheduler": {"type": "pbt", "perturbation_interval": 1, "max_t": 4},
                     "checkpoint": {"every": 1}})
    assert type(algorithms.make_searcher(spec)).__name__ == "BasicVariantGenerator"
    space = algorithms.param_space(spec)
    assert space["lr"] == tune.grid_search([1e-3, 1e-2])
    assert space["batch_size"] == tune.grid_search([32, 64])
    assert algorithms.tune_num_samples(spec) == 1  # Ray multiplies its grid by num_samples
    algorithms.check(spec)


def test_grid_searcher_resumes_where_it_stopped(tmp_path):
    from raytune_suite.engine.grid import WrittenOrderGrid

    spec = _grid_spec({"lr": {"grid": [1, 2, 3]}, "batch_size": {"grid": [8, 16]}})
    first = WrittenOrderGrid(spec.search_space.grid_points())
    seen = [first.suggest("a"), first.suggest("b")]
    first.save(str(tmp_path / "grid.pkl"))
    again = WrittenOrderGrid([])
    again.restore(str(tmp_path / "grid.pkl"))
    rest = _suggestions(again)
    assert seen + rest == spec.search_space.grid_points() and len(rest) == 4


def test_pbt_mutations_derived_from_same_entries():
    muts = parse(SPACE).pbt_mutations()
    assert isinstance(muts["lr"], Float)
    assert muts["batch_size"] == [32, 64]
    assert isinstance(muts["schedule"]["gamma"], Float)
    assert "optimizer" not in muts  # conditional: not mutable


def test_clip_keeps_pbt_perturbations_inside_their_domains():
    space = parse({"momentum": {"uniform": [0.5, 0.99]}, "lr": {"loguniform": [1e-4, 1e-1]},
                   "layers": {"randint": [1, 4]}, "width": {"quniform": [0.25, 1.0, 0.25]},
                   "noise": {"normal": [0, 1]}, "bs": {"choice": [16, 32]},
                   "opt": {"beta": {"uniform": [0.8, 0.9]}}})
    config = {"momentum": 0.99 * 1.2, "lr": 1e-4 * 0.8, "layers": 3 * 1.2, "width": 0.8,
              "noise": 7.0, "bs": 32, "opt": {"beta": 0.5}, "other": 123}
    assert space.clip(config) == {"momentum": 0.99, "lr": 1e-4, "layers": 3, "width": 0.75,
                                  "noise": 7.0, "bs": 32, "opt": {"beta": 0.8}, "other": 123}


@pytest.mark.parametrize("name", list(algorithms.SCHEDULERS))
def test_scheduler_registry_builds(name):
    sched = {"fifo": {"type": "fifo"}, "asha": {"type": "asha", "max_t": 5},
             "hyperband": {"type": "hyperband", "max_t": 6, "reduction_factor": 2},
             "pbt": {"type": "pbt", "max_t": 6, "perturbation_interval": 2}}[name]
    spec = validate({"name": "s", "trainable": "classifier", "metric": "val_loss",
                     "mode": "min", "config": {"dataset": "iris", "epochs": 6},
                     "search_space": {"lr": {"loguniform": [1e-4, 1e-1]}},
                     "scheduler": sched, "checkpoint": {"keep": 3}})
    scheduler = algorithms.make_scheduler(spec)
    if name == "pbt":
        assert scheduler._perturbation_interval == 2
        assert scheduler._time_attr == "training_iteration"
        assert set(scheduler._hyperparam_mutations) == {"lr"}
        assert scheduler._custom_explore_fn({"lr": 0.5}) == {"lr": 0.1}  # clipped to domain
    if name == "asha":
        assert scheduler._max_t == 5
    if name == "hyperband":
        assert scheduler._max_t_attr == 6 and scheduler._eta == 2


@pytest.mark.parametrize("name", list(algorithms.SEARCHERS))
def test_searcher_registry_builds(name):
    space = {"lr": {"choice" if name in ("hyperopt", "optuna") else "grid": [1e-3, 1e-2]}}
    spec = validate({"name": "s", "trainable": "classifier", "metric": "val_loss",
                     "mode": "min", "config": {"dataset": "iris"}, "search_space": space,
                     "search": {"algorithm": name, "seed": 3}})
    searcher = algorithms.make_searcher(spec)
    if name != "hyperopt":
        limited = algorithms.make_searcher(validate({**spec.model_dump(exclude={"search_space"}),
                                                     "search_space": space,
                                                     "search": {"algorithm": name,
                                                                "max_concurrent": 3}}))
        assert limited.max_concurrent == 3
    if name == "hyperopt":
        assert isinstance(searcher, HyperOptSearch)
        limited = algorithms.make_searcher(validate({**spec.model_dump(exclude={"search_space"}),
                                                     "search_space": space,
                                                     "search": {"algorithm": name,
                                                                "max_concurrent": 3}}))
        assert isinstance(limited, ConcurrencyLimiter) and limited.max_concurrent == 3
        # Seeded: two searchers built from one spec suggest the same configs.
        space = {"lr": tune.loguniform(1e-4, 1e-1), "bs": tune.choice([16, 32, 64])}
        twin = algorithms.make_searcher(spec)
        for s in (searcher, twin):
            s.set_search_properties("val_loss", "min", space)
        first = [searcher.suggest(f"t{i}") for i in range(5)]
        assert first == [twin.suggest(f"t{i}") for i in range(5)]
        assert len({c["lr"] for c in first}) == 5


def test_the_optuna_searcher_is_seeded():
    spec = validate({"name": "s", "trainable": "classifier", "metric": "val_loss",
                     "mode": "min", "config": {"dataset": "iris"},
                     "search_space": {"lr": {"loguniform": [1e-4, 1e-1]}},
                     "search": {"algorithm": "optuna", "seed": 3, "n_initial_points": 2}})
    space = {"lr": tune.loguniform(1e-4, 1e-1), "bs": tune.choice([16, 32, 64])}
    runs = []
    for _ in range(2):
        searcher = algorithms.make_searcher(spec)
        searcher.set_search_properties("val_loss", "min", space)
        configs = []
        for i in range(4):  # past the random start: TPE's suggestions are seeded too
            configs.append(searcher.suggest(f"t{i}"))
            searcher.on_trial_complete(f"t{i}", {"val_loss": configs[-1]["lr"]})
        runs.append(configs)
    assert runs[0] == runs[1] and len({c["lr"] for c in runs[0]}) == 4
