"""The experiment file: valid files load, every kind of mistake is one clear line."""

import subprocess
import textwrap

import pytest

from helpers import CLI, EXPERIMENTS, cli_env
from raytune_suite.cli import main
from raytune_suite.errors import SpecError
from raytune_suite.experiment import ExperimentSpec, apply_override, load_spec, validate

BASE = {
    "name": "t",
    "trainable": "classifier",
    "config": {"dataset": "iris", "epochs": 3},
    "search_space": {"lr": {"loguniform": [1e-4, 1e-1]}},
    "metric": "val_accuracy",
    "mode": "max",
}


def with_(**changes):
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return raw


DELETE = object()


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    """A checkpoint folder for the shipped distillation recipe to name: the teacher's
    experiment it names exists only after the teacher recipe has run."""
    from raytune_suite.training import checkpoint as ckpt
    from raytune_suite.training.config import ClassifierConfig
    from raytune_suite.training.models import CNN

    cfg = ClassifierConfig(dataset="digits", model="cnn", width=1.0)
    return ckpt.save(tmp_path_factory.mktemp("teacher"), {
        "model": CNN((1, 8, 8), 10).state_dict(), "optimizer": {}, "epoch": 1,
        "config": cfg.model_dump()})


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_experiments_validate(path, teacher_checkpoint):
    teacher = [f"config.distill_from={teacher_checkpoint}"] \
        if "distill_from:" in path.read_text() else []
    spec, _ = load_spec(path, teacher)
    assert isinstance(spec, ExperimentSpec)


def test_spec_is_frozen():
    spec = validate(with_())
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]


def test_defaults():
    spec = validate(with_())
    assert spec.search.algorithm == "random" and spec.scheduler.type == "fifo"
    assert spec.resources.cpu == 1 and spec.resources.gpu == 0
    assert spec.tracking.mlflow.tracking_uri == "sqlite:///mlflow.db"
    assert spec.experiment_path.endswith("/ray_results/t")


# (raw mapping, field named in the message, words of the rule)
BAD = {
    "unknown top-level key": (with_(serach={"algorithm": "grid"}), "serach", "unknown key"),
    "unknown nested key": (with_(search__algoritm="grid"), "search.algoritm", "valid keys are"),
    "wrong type": (with_(search__num_samples="8"), "search.num_samples", "must be an integer"),
    "float for int": (with_(search__num_samples=2.5), "search.num_samples", "integer"),
    "reversed range": (with_(search_space={"lr": {"uniform": [0.5, 0.1]}}),
                       "search_space.lr.uniform", "low < high"),
    "empty range": (with_(search_space={"lr": {"uniform": [0.1, 0.1]}}),
                    "search_space.lr.uniform", "empty or reversed"),
    "loguniform zero": (with_(search_space={"lr": {"loguniform": [0, 1]}}),
                        "search_space.lr.loguniform", "low > 0"),
    "qloguniform negative": (with_(search_space={"lr": {"qloguniform": [-1, 1, 0.1]}}),
                             "search_space.lr.qloguniform", "low > 0"),
    "quniform q zero": (with_(search_space={"w": {"quniform": [0, 1, 0]}}),
                        "search_space.w.quniform", "q > 0"),
    "randint floats": (with_(search_space={"n": {"randint": [1.5, 4]}}),
                       "search_space.n.randint", "integers"),
    "normal sd": (with_(search_space={"x": {"normal": [0, -1]}}), "search_space.x.normal", "sd > 0"),
    "domain arity": (with_(search_space={"lr": {"uniform": [0.1]}}),
                     "search_space.lr.uniform", "[low, high]"),
    "empty choice": (with_(search_space={"b": {"choice": []}}), "search_space.b.choice",
                     "at least one"),
    "unknown domain": (with_(search_space={"lr": {"lognormal": [0, 1]}}), "search_space.lr",
                       "valid domains are"),
    "bare value in space": (with_(search_space={"lr": 0.1}), "search_space.lr",
                            "fixed values belong under config"),
    "grid with hyperopt": (with_(search__algorithm="hyperopt",
                                 search_space={"lr": {"grid": [0.1, 0.01]}}),
                           "search_space.lr", "hyperopt"),
    "continuous with grid": (with_(search__algorithm="grid"), "search_space.lr",
                             "grid or choice"),
    "missing metric": (with_(metric=DELETE), "metric", "is required"),
    "empty metric": (with_(metric=""), "metric", "must not be empty"),
    "bad mode": (with_(mode="maximize"), "mode", "one of min, max"),
    "zero cpus": (with_(resources={"cpu": 0}), "resources.cpu", "> 0"),
    "negative cpus": (with_(resources={"cpu": -2}), "resources.cpu", "> 0"),
    "negative gpus": (with_(resources={"gpu": -0.5}), "resources.gpu", ">= 0"),
    "gpu 1.5": (with_(resources={"gpu": 1.5}), "resources.gpu", "whole number"),
    "unknown searcher": (with_(search__algorithm="tpe"), "search.algorithm",
                         "grid, random, hyperopt"),
    "unknown scheduler": (with_(scheduler={"type": "successive"}), "scheduler.type",
                          "fifo, asha, hyperband, pbt"),
    "bohb scheduler": (with_(scheduler={"type": "bohb", "max_t": 3}), "scheduler.type",
                       "not supported: BOHB needs the hpbandster"),
    "bohb searcher": (with_(search__algorithm="bohb"), "search.algorithm",
                      "not supported: BOHB needs the hpbandster"),
    "scheduler without type": (with_(scheduler={"max_t": 3}), "scheduler.type", "required"),
    "asha key on pbt": (with_(scheduler={"type": "pbt", "max_t": 4, "grace_period": 1}),
                        "scheduler.grace_period", "unknown key"),
    "asha needs max_t": (with_(scheduler={"type": "asha"}), "scheduler.max_t", "required"),
    "grace beyond max_t": (with_(scheduler={"type": "asha", "max_t": 2, "grace_period": 3}),
                           "scheduler.grace_period", "<= scheduler.max_t"),
    "pbt nothing mutable": (with_(search_space={}, scheduler={"type": "pbt", "max_t": 4}),
                            "search_space", "mutable"),
    "pbt only conditional": (with_(search_space={"optimizer": {"choice": [
        {"name": "sgd", "momentum": {"uniform": [0.5, 0.9]}}, {"name": "adam"}]}},
        scheduler={"type": "pbt", "max_t": 4}), "search_space", "mutable"),
    "pbt interval vs checkpoint": (with_(scheduler={"type": "pbt", "max_t": 4,
                                                    "perturbation_interval": 3},
                                         checkpoint={"every": 2, "keep": 3}),
                                   "scheduler.perturbation_interval", "multiple of checkpoint"),
    "pbt with hyperopt": (with_(search__algorithm="hyperopt",
                                scheduler={"type": "pbt", "max_t": 4}),
                          "search.algorithm", "pbt"),
    "max_t beyond epochs": (with_(scheduler={"type": "fifo", "max_t": 10}), "scheduler.max_t",
                            "config.epochs"),
    "bad name": (with_(name="my experiment/1"), "name", "letters, digits"),
    "bad trainable path": (with_(trainable="no_such_pkg.mod:fn"), "trainable", "importable"),
    "trainable missing function": (with_(trainable="raytune_suite.experiment.spec:nope"), "trainable",
                                   "no function 'nope'"),
    "trainable not a path": (with_(trainable="resnet"), "trainable", "built-in"),
    "classifier unknown key": (with_(config={"dataset": "iris", "lrr": 0.1}), "config.lrr",
                               "valid keys are"),
    "classifier unknown dataset": (with_(config={"dataset": "imagenet"}), "config.dataset",
                                   "one of digits"),
    "tracking uri not a uri": (with_(tracking={"mlflow": {"tracking_uri": "mlflow.db"}}),
                               "tracking.mlflow.tracking_uri", "URI"),
    "keep zero": (with_(checkpoint={"keep": 0}), "checkpoint.keep", "> 0"),
    "negative max_failures": (with_(failure={"max_failures": -1}), "failure.max_failures", ">= 0"),
    "time budget zero": (with_(stop={"time_budget_s": 0}), "stop.time_budget_s", "> 0"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_spec_names_field_and_rule(case):
    raw, field, rule = BAD[case]
    with pytest.raises(SpecError) as info:
        validate(raw)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"{field}: "), first
    assert rule in first, first
    assert ", got " in first, first


def _write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_cli_bad_file_exit_2_one_line_nothing_created(in_tmp, capsys):
    path = _write(in_tmp, """
        name: t
        metric: val_accuracy
        mode: max
        search_space: {lr: {uniform: [1, 0]}}
    """)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: search_space.lr.uniform: low < high must hold (the range is empty "
                   "or reversed), got [1, 0]"]
    assert sorted(p.name for p in in_tmp.iterdir()) == ["exp.yaml"]


def test_cli_yaml_syntax_error(in_tmp, capsys):
    path = _write(in_tmp, "name: t\nsearch_space: {lr: [1, 2\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "must be valid YAML" in err and "exp.yaml:" in err


def test_cli_missing_file(in_tmp, capsys):
    assert main(["validate", "nope.yaml"]) == 2
    assert "nope.yaml: must be a readable file" in capsys.readouterr().err


def test_cli_subprocess_exit_status_no_traceback(tmp_path):
    """The installed console path: exit 2, one line on stderr, no traceback, no files."""
    path = _write(tmp_path, """
        name: t
        metric: val_accuracy
        mode: max
        resources: {cpu: -1}
    """)
    proc = subprocess.run([*CLI, "run", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, env=cli_env())
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "error: resources.cpu: must be > 0.0, got -1"
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]




# ----------------------------------------------------------------- --set


def test_set_is_typed_by_schema():
    raw = with_()
    apply_override(raw, "search.num_samples=8")
    apply_override(raw, "name=1e-3")  # a string field keeps the text
    apply_override(raw, "config.hidden=[32, 16]")
    apply_override(raw, "search_space.lr={uniform: [0.1, 0.2]}")
    apply_override(raw, "scheduler.type=asha")
    apply_override(raw, "scheduler.max_t=3")
    spec = validate(raw)
    assert spec.search.num_samples == 8
    assert spec.name == "1e-3"
    assert spec.config["hidden"] == [32, 16]
    assert dict(spec.search_space.entries)["lr"].args == (0.1, 0.2)
    assert spec.scheduler.type == "asha" and spec.scheduler.max_t == 3


def test_set_bad_value_is_a_spec_error():
    raw = with_()
    apply_override(raw, "search.num_samples=many")
    with pytest.raises(SpecError, match=r"^search.num_samples: must be an integer, got 'many'"):
        validate(raw)
    with pytest.raises(SpecError, match="must look like field.path=value"):
        apply_override(with_(), "search.num_samples")
