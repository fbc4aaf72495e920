"""Several objectives: the file's metric/mode lists, and the Pareto front (no Ray)."""

import pytest

from raytune_suite.engine import registry
from raytune_suite.engine.results import TrialSummary, pareto_front
from raytune_suite.errors import SpecError
from raytune_suite.experiment import validate
from raytune_suite.experiment.spec import apply_override

BASE = {"name": "mo", "trainable": "ray.tune.examples.async_hyperband_example:easy_objective",
        "search_space": {"width": {"uniform": [0, 1]}},
        "search": {"algorithm": "optuna", "num_samples": 4}}


def _trial(name: str, **values) -> TrialSummary:
    return TrialSummary(trial_id=name, config={}, best=None, epochs=1, status="TERMINATED",
                        checkpoint=None, values=values)


def test_lists_give_every_objective_and_the_first_ranks():
    spec = validate({**BASE, "metric": ["acc", "size"], "mode": ["max", "min"]})
    assert (spec.metric, spec.mode) == ("acc", "max")
    assert spec.objectives == (("acc", "max"), ("size", "min"))
    assert spec.metrics == ["acc", "size"]
    one = validate({**BASE, "metric": "acc", "mode": "max"})
    assert one.objectives == () and one.all_objectives == (("acc", "max"),)


@pytest.mark.parametrize("change, field, rule", [
    ({"metric": ["a", "b"], "mode": "max"}, "mode", "one mode per metric (2 metrics)"),
    ({"metric": ["a", "b"], "mode": ["max"]}, "mode", "one mode per metric"),
    ({"metric": ["a"], "mode": ["max"]}, "metric", "a list of at least 2"),
    ({"metric": "a", "mode": ["max", "min"]}, "mode", "a list goes with a list of metrics"),
    ({"metric": ["a", "a"], "mode": ["max", "min"]}, "metric", "must not name a metric twice"),
    ({"metric": ["a", 3], "mode": ["max", "min"]}, "metric", "a list of metric names"),
    ({"metric": ["a", "b"], "mode": ["max", "up"]}, "mode[1]", "'min' or 'max'"),
    ({"metric": ["a", "b"], "mode": ["max", "min"], "search": {"algorithm": "hyperopt"}},
     "search.algorithm", "must be optuna to search several objectives"),
    ({"metric": ["a", "b"], "mode": ["max", "min"], "scheduler": {"type": "asha", "max_t": 4}},
     "scheduler.type", "must be fifo with several objectives"),
    ({"metric": "a", "mode": "max", "objectives": [["a", "max"]]}, "objectives",
     "is not a field"),
])
def test_bad_objective_lists_name_the_field_and_the_rule(change, field, rule):
    with pytest.raises(SpecError) as info:
        validate({**BASE, **change})
    assert info.value.field == field and rule in info.value.rule


def test_set_takes_a_list_for_metric_and_mode():
    raw = {**BASE, "metric": "a", "mode": "max"}
    apply_override(raw, "metric=[a, b]")
    apply_override(raw, "mode=[max, min]")
    apply_override(raw, "name=[x]")  # other string fields stay verbatim
    assert raw["metric"] == ["a", "b"] and raw["mode"] == ["max", "min"]
    assert raw["name"] == "[x]"


def test_the_optuna_searcher_takes_every_objective_and_holds_the_space():
    spec = validate({**BASE, "metric": ["acc", "size"], "mode": ["max", "min"],
                     "search": {"algorithm": "optuna", "num_samples": 4, "seed": 3,
                                "max_concurrent": 2}})
    registry.check(spec)
    parts = registry.build(spec)
    searcher = parts.searcher.searcher  # inside the ConcurrencyLimiter
    assert searcher.metric == ["acc", "size"] and searcher.mode == ["max", "min"]
    assert "width" not in parts.param_space  # the searcher holds the searched entries
    config = searcher.suggest("t1")
    assert 0 <= config["width"] <= 1


def test_pareto_front_keeps_the_non_dominated_in_order():
    trials = [_trial("a", acc=0.9, size=80.0), _trial("b", acc=0.8, size=40.0),
              _trial("c", acc=0.8, size=50.0),  # dominated by b
              _trial("d", acc=0.7, size=90.0),  # dominated by a and b
              _trial("e", acc=0.5, size=10.0), _trial("f", acc=0.9, size=80.0),  # tie with a
              _trial("g", acc=0.99)]  # no size: not comparable, left out
    front = pareto_front(trials, [("acc", "max"), ("size", "min")])
    assert [t.trial_id for t in front] == ["a", "b", "e", "f"]
    flipped = pareto_front(trials, [("acc", "min"), ("size", "max")])
    assert [t.trial_id for t in flipped] == ["d", "e"]


def test_a_validated_spec_validates_again_from_its_dump():
    for metric, mode in ((["acc", "size"], ["max", "min"]), ("acc", "max")):
        spec = validate({**BASE, "metric": metric, "mode": mode})
        again = validate({**spec.model_dump(exclude={"search_space"}),
                          "search_space": BASE["search_space"]})
        assert again.all_objectives == spec.all_objectives
