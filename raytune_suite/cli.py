"""The ``raytune-suite`` command line.

User mistakes (a bad experiment file, an unknown experiment) print one line per
mistake and exit with status 2, before Ray or MLflow start.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from raytune_suite.errors import Interrupted, SpecError

EXIT_USER_ERROR = 2
EXIT_TRIALS_FAILED = 3  # the search ran to its end, but some trials errored
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="raytune-suite",
        description="Hyperparameter search for PyTorch models: experiment file -> Ray Tune -> MLflow.")
    sub = p.add_subparsers(dest="command", required=True)

    def add_verbose(sp):
        sp.add_argument("--verbose", action="store_true",
                        help="Ray Tune's own output (trial tables, worker logs) instead of "
                             "the progress display")

    def add_set(sp):
        sp.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE", help="override a field, e.g. search.num_samples=8")

    run = sub.add_parser("run", help="run an experiment file")
    run.add_argument("file")
    run.add_argument("--address", help="Ray cluster: auto or HOST:PORT (default: embedded Ray)")
    run.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_verbose(run)
    add_set(run)

    val = sub.add_parser("validate", help="check an experiment file; start nothing")
    val.add_argument("file")
    add_set(val)

    plan = sub.add_parser("plan", help="what a search will cost (trials, epochs, "
                                       "concurrency, time) before it starts; writes nothing")
    plan.add_argument("file")
    plan.add_argument("--address", help="Ray cluster whose CPUs and GPUs run the search")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--probe", action="store_true",
                      help="time one epoch of one configuration here, for wall-clock and "
                           "CPU/GPU-hours (built-in classifier)")
    add_set(plan)

    res = sub.add_parser("resume", help="finish an interrupted experiment")
    res.add_argument("experiment", help="a results folder, or a name under ./ray_results")
    res.add_argument("--address")
    add_verbose(res)

    ext = sub.add_parser("extend", help="more trials for a finished (or interrupted) search; "
                                        "the searcher and scheduler keep what they learnt")
    ext.add_argument("experiment", help="a results folder, or a name under ./ray_results")
    ext.add_argument("--num-samples", type=int, required=True, metavar="N",
                     help="how many trials to add")
    ext.add_argument("--address")
    add_verbose(ext)

    best = sub.add_parser("best", help="best config, metric and checkpoint of an experiment")
    best.add_argument("experiment")
    best.add_argument("--json", action="store_true", help="machine-readable output")
    best.add_argument("--evaluate", action="store_true",
                      help="score the best checkpoint on the held-out test split "
                           "(built-in classifier)")
    best.add_argument("--ensemble", type=int, metavar="K",
                      help="with --evaluate: also score the average of the top K trials' "
                           "softmax outputs (K >= 2; K=1 is --evaluate alone), kept in "
                           "the experiment's ensembles.jsonl and its report")
    best.add_argument("--register", metavar="NAME",
                      help="log the best checkpoint as an MLflow model on the search run and "
                           "register it as a new version of NAME in the Model Registry")
    sync = sub.add_parser("mlflow-sync", help="backfill MLflow from an experiment's Ray "
                                               "results (after a tracking-server outage)")
    sync.add_argument("experiment", help="a results folder, or a name under ./ray_results")

    rep = sub.add_parser("report", help="write an experiment's HTML report (curves, "
                                        "hyperparameters, importance, rungs, PBT lineage)")
    rep.add_argument("experiment", help="a results folder, or a name under ./ray_results")
    rep.add_argument("--out", metavar="FILE.html",
                     help="where to write it (default: <experiment folder>/report.html)")

    sub_ = sub.add_parser("submit", help="run an experiment file as a Ray Job on a cluster")
    sub_.add_argument("file")
    sub_.add_argument("--address", required=True,
                      help="the cluster's dashboard, e.g. http://127.0.0.1:8265 "
                           "(through `ray dashboard CLUSTER.yaml`)")
    sub_.add_argument("--no-wait", action="store_true", help="return once submitted")
    add_set(sub_)

    st = sub.add_parser("status", help="status (and logs) of a submitted job")
    st.add_argument("job")
    st.add_argument("--address", required=True)
    st.add_argument("--logs", action="store_true")

    cl = sub.add_parser("cluster", help="cluster files")
    cl_sub = cl.add_subparsers(dest="cluster_command", required=True)
    cv = cl_sub.add_parser("validate", help="check a Ray cluster launcher file or KubeRay "
                                            "manifest against Ray's schema and security rules")
    cv.add_argument("file")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    ray_before = _ray_running()
    try:
        return _COMMANDS[args.command](args)
    except SpecError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as e:
        print(f"\ninterrupted: the experiment's state is saved in {e.path}\n"
              f"resume it with: raytune-suite resume {e.path}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if not ray_before and _ray_running():
            # The Ray this command started, stopped now that its output is printed: at
            # interpreter exit Ray's own handler would first sleep 0.5 s, then do the same.
            sys.modules["ray"].shutdown()


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _validate(args) -> int:
    from raytune_suite.engine.registry import check
    from raytune_suite.experiment import load_spec

    spec, _ = load_spec(args.file, args.overrides)
    check(spec)  # Ray Tune builds the searcher, scheduler and space as the run will
    mutated = ""
    if spec.scheduler.type == "pbt":
        from raytune_suite.experiment import mutation_space

        mutated = f", {len(list(mutation_space(spec).leaves()))} mutated by pbt"
    print(f"{args.file}: ok ({spec.search.algorithm} search, {spec.scheduler.type} scheduler, "
          f"{len(list(spec.search_space.leaves()))} searched hyperparameters{mutated})")
    return 0


def _run(args) -> int:
    from raytune_suite.engine import phases
    from raytune_suite.experiment import load_spec

    phases.mark("imports")
    if not args.no_mlflow:  # its imports on the idle core while the file is checked
        from raytune_suite.tracking import prestart_writer

        prestart_writer()
    spec, raw = load_spec(args.file, args.overrides)
    from raytune_suite.engine.plan import local_capacity, make_plan

    # The arithmetic only: no probe, and no Ray started to ask a cluster for its size.
    print(make_plan(spec, None if args.address else local_capacity(spec)).summary())
    from raytune_suite.engine.runner import run_experiment

    try:
        return _print_outcome(run_experiment(spec, raw, address=args.address,
                                             use_mlflow=not args.no_mlflow,
                                             progress=_progress(args), source=args.file))
    finally:
        _print_phases(args)


def _resume(args) -> int:
    from raytune_suite.engine import phases
    from raytune_suite.engine.runner import resume_experiment

    phases.mark("imports")
    try:
        return _print_outcome(resume_experiment(args.experiment, address=args.address,
                                                progress=_progress(args)), resumed=True)
    finally:
        _print_phases(args)


def _print_phases(args) -> None:
    """With --verbose: where the run's time went (``engine.phases``)."""
    from raytune_suite.engine import phases

    phases.mark("end")
    if args.verbose and phases.line():
        print(phases.line())


def _progress(args):
    """The console display of a search, or None for Ray's own output (--verbose)."""
    if args.verbose:
        return None
    from raytune_suite.report.console import console_callbacks

    return console_callbacks


def _print_outcome(outcome, resumed: bool = False) -> int:
    """Print the end of a search; its exit status (3 when trials errored). ``resumed``:
    the search ran in more than one session (its epochs are counted over all of them)."""
    from raytune_suite.engine.plan import outcome_line
    from raytune_suite.engine.runner import mlflow_hint
    from raytune_suite.report import leaderboard

    spec = outcome.spec
    diverged = [t for t in outcome.trials if t.status == "DIVERGED"]
    print()
    print(f"{spec.name}: {len(outcome.trials)} trials, {outcome.errors} errored, "
          f"{len(diverged)} diverged; top {min(5, len(outcome.trials))} by {spec.metric} "
          f"({spec.mode}):")
    print(leaderboard(outcome.trials, spec.metric))
    _print_pareto(outcome)
    counts = outcome.outcomes
    print("outcomes: " + ", ".join(f"{n} {name.replace('_', ' ')}"
                                   for name, n in sorted(counts.items())))
    if outcome.pbt:
        p = outcome.pbt
        print(f"pbt:     {p['exploits']} exploits ({p['retrained']} epochs retrained), "
              f"{p['skipped']} skipped for want of a recent donor checkpoint")
    print(outcome_line(outcome, resumed))
    report = _write_report(outcome)
    print(f"\nresults: {outcome.path}")
    if report:
        print(f"report:  {report}")
    print(f"best:    raytune-suite best {outcome.path}")
    if outcome.tracking_uri:
        print(f"mlflow:  {mlflow_hint(outcome.tracking_uri, outcome.path)}")
    if outcome.mlflow_offline:
        print(f"warning: MLflow missed part of this search ({outcome.mlflow_offline}); once "
              f"it is back: raytune-suite mlflow-sync {outcome.path}", file=sys.stderr)
    if outcome.errors:
        print(f"error: {outcome.errors} of {len(outcome.trials)} trials errored (their "
              f"error.txt in {outcome.path}/<trial>/); fix and run `raytune-suite resume "
              f"{outcome.path}` to retry them", file=sys.stderr)
        return EXIT_TRIALS_FAILED
    return 0


def _print_pareto(outcome, top: int = 10) -> None:
    """With several objectives: the trials on the Pareto front."""
    if not outcome.spec.objectives:
        return
    from raytune_suite.report import pareto_table

    front = outcome.pareto
    goals = ", ".join(f"{m} {mode}" for m, mode in outcome.spec.objectives)
    print(f"pareto front ({goals}; last reported values): {len(front)} of "
          f"{len(outcome.trials)} trials")
    if front:
        print(pareto_table(front[:top], outcome.spec.objectives))
    if len(front) > top:
        print(f"... and {len(front) - top} more (raytune-suite best {outcome.path} --json)")


def _pareto_records(outcome) -> list[dict]:
    return [{"trial_id": t.trial_id, "objectives": dict(t.values), "config": t.config,
             "epochs": t.epochs, "checkpoint": t.checkpoint} for t in outcome.pareto]


def _write_report(outcome) -> Optional[str]:
    """Write the experiment's HTML report into its folder and log it to the search's
    MLflow run; its path, or None (and one line saying why) if it could not be written."""
    if "://" in outcome.spec.storage:
        return None  # the report reads the experiment folder locally
    from raytune_suite.engine.state import read_state
    from raytune_suite.report.html import write_report

    try:
        path = write_report(outcome.path)
    except Exception as e:  # noqa: BLE001 - the search's results matter more
        print(f"warning: the HTML report was not written ({type(e).__name__}: {e}); try "
              f"`raytune-suite report {outcome.path}`", file=sys.stderr)
        return None
    parent = read_state(outcome.path).get("parent_run_id")
    if outcome.tracking_uri and parent and not outcome.mlflow_offline:
        from raytune_suite import tracking

        try:
            tracking.log_report(outcome.tracking_uri, parent, path)
        except Exception as e:  # noqa: BLE001 - the file is written all the same
            print(f"warning: the report did not reach MLflow ({tracking.short_reason(e)})",
                  file=sys.stderr)
    return str(path)


def _plan(args) -> int:
    """``plan``: trials, epochs, concurrency and (``--probe``) time of a search, before it
    starts; starts no search and writes nothing."""
    from raytune_suite.engine.plan import plan_file

    plan = plan_file(args.file, args.overrides, address=args.address, probe=args.probe)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else "\n".join(plan.lines()))
    return 0


def _extend(args) -> int:
    from raytune_suite.engine import phases
    from raytune_suite.engine.runner import resume_experiment

    phases.mark("imports")
    try:  # the count is checked with the experiment (engine.extend.check_extendable)
        return _print_outcome(resume_experiment(args.experiment, address=args.address,
                                                progress=_progress(args),
                                                more_samples=args.num_samples),
                              resumed=True)
    finally:
        _print_phases(args)


def _best(args) -> int:
    from raytune_suite.engine.runner import load_outcome

    outcome = load_outcome(args.experiment)
    best = outcome.best
    if best is None:
        raise SpecError("EXPERIMENT", f"has no trial with a finite {outcome.spec.metric}",
                        outcome.path)
    payload = {"experiment": outcome.path, "metric": outcome.spec.metric,
               "mode": outcome.spec.mode, "value": best.best, "trial_id": best.trial_id,
               "epochs": best.epochs, "config": best.config, "checkpoint": best.checkpoint}
    if outcome.spec.objectives:
        payload["objectives"] = [{"metric": m, "mode": mode}
                                 for m, mode in outcome.spec.objectives]
        payload["pareto"] = _pareto_records(outcome)
    if args.ensemble is not None and not args.evaluate:
        raise SpecError("--ensemble", "needs --evaluate (it scores on the test split)",
                        args.ensemble)
    if args.ensemble is not None:  # a K that cannot be, before anything is scored
        from raytune_suite.training.ensemble import pick_members

        pick_members(outcome.trials, args.ensemble, outcome.spec.metric)
    if args.evaluate:
        payload["test"] = _evaluate(outcome, best)
    if args.ensemble is not None:
        payload["ensemble"] = _ensemble(outcome, args.ensemble)
    if args.register:
        payload["registered"] = _register(outcome, best, args.register)
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(f"best trial:  {best.trial_id} ({best.epochs} epochs)")
        print(f"{outcome.spec.metric}: {best.best:.6g}")
        print("config:")
        for k, v in best.config.items():
            print(f"  {k}: {v}")
        print(f"checkpoint:  {best.checkpoint}")
        if args.evaluate:
            test = payload["test"]
            print(f"\ntest accuracy: {test['test_accuracy']:.4f} "
                  f"(macro F1 {test['test_f1_macro']:.4f}, {test['test_samples']} samples)")
            print(test["report"])
        if args.ensemble is not None:
            _print_ensemble(payload)
        if args.register:
            _print_registered(payload["registered"])
        if outcome.spec.objectives:
            print()
            _print_pareto(outcome, top=len(outcome.trials))
    return 0


def _ensemble(outcome, k: int) -> dict:
    """``best --evaluate --ensemble K``: the top K trials' averaged softmax on the test
    split, next to the single best; kept in the experiment folder (``ensembles.jsonl``),
    and in its report.html when it has one."""
    if outcome.spec.trainable != "classifier":
        raise SpecError("--ensemble", "needs the built-in classifier trainable",
                        outcome.spec.trainable)
    from pathlib import Path

    from raytune_suite.report.html import REPORT_FILE
    from raytune_suite.training.ensemble import evaluate_top_k, record_ensemble

    result = evaluate_top_k(outcome.trials, k, outcome.spec.metric)
    result["saved"] = str(record_ensemble(outcome.path, result))
    # A report already written would now hide what was just computed: write it again.
    has_report = (Path(outcome.path) / REPORT_FILE).is_file()
    result["report"] = _write_report(outcome) if has_report else None
    return result


def _print_ensemble(payload: dict) -> None:
    e = payload["ensemble"]
    print(f"\nensemble of the top {e['k']} (mean of their softmax outputs) on the test "
          f"split, {e['test_samples']} samples:")
    print(f"  {'rank':<5}{'trial':<20}{e['metric']:>14}{'accuracy':>10}{'macro F1':>10}")
    for i, m in enumerate(e["members"], 1):
        print(f"  {i:<5}{m['trial_id']:<20}{m['value']:>14.6g}{m['test_accuracy']:>10.4f}"
              f"{m['test_f1_macro']:>10.4f}")
    single, ens = e["single"], e["ensemble"]
    print(f"single best ({single['trial_id']}): accuracy {single['test_accuracy']:.4f}, "
          f"macro F1 {single['test_f1_macro']:.4f}")
    gain = ens["test_accuracy"] - single["test_accuracy"]
    print(f"ensemble of {e['k']}: accuracy {ens['test_accuracy']:.4f} ({gain:+.4f}), "
          f"macro F1 {ens['test_f1_macro']:.4f}")
    print(f"saved:   {e['saved']}")
    if e["report"]:
        print(f"report:  {e['report']}")


def _register(outcome, best, name: str) -> dict:
    """``best --register NAME``: the best checkpoint as an MLflow model, registered as a
    new version of NAME."""
    from raytune_suite.tracking import register_best_model

    return register_best_model(outcome, name)


def _print_registered(registered: dict) -> None:
    uri = registered["model_uri"]
    print(f"\nregistered:  {uri} (tracking URI {registered['tracking_uri']})")
    print(f"search run:  {registered['run_id']}")
    if registered["no_flavour"]:
        print(registered["no_flavour"])
        print(f'fetch it:    mlflow.artifacts.download_artifacts("{uri}")')
        return
    print(f"input:       {registered['input']}")
    print("output:      class probabilities, one column per class: "
          f"{', '.join(registered['classes'])}")
    print(f'load it:     mlflow.pyfunc.load_model("{uri}")  (with '
          f'mlflow.set_tracking_uri("{registered["tracking_uri"]}"); on a machine with a GPU '
          'add model_config={"device": "cpu"})')


def _evaluate(outcome, best) -> dict:
    if outcome.spec.trainable != "classifier":
        raise SpecError("--evaluate", "needs the built-in classifier trainable",
                        outcome.spec.trainable)
    if not best.checkpoint:
        raise SpecError("--evaluate", "needs a checkpoint of the best trial", None)
    from raytune_suite.training.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(best.checkpoint)


def _mlflow_sync(args) -> int:
    from raytune_suite.sync import sync_experiment

    r = sync_experiment(args.experiment)
    print(f"{r.path}: {r.trials} trials in {r.tracking_uri}; created {r.runs_created} runs, "
          f"logged {r.metrics_logged} metric values, closed {r.runs_closed} runs")
    return 0


def _report(args) -> int:
    from raytune_suite.report.html import write_report

    print(write_report(args.experiment, args.out))
    return 0


def _submit(args) -> int:
    from raytune_suite.jobs import submit

    _, state = submit(args.file, args.overrides, args.address, wait=not args.no_wait)
    if state is None:
        return 0
    print(f"job finished: {state}")
    return 0 if state == "SUCCEEDED" else 1


def _status(args) -> int:
    from raytune_suite.jobs import status

    state = status(args.job, args.address, logs=args.logs)
    return 1 if state in ("FAILED", "STOPPED") else 0


def _cluster(args) -> int:
    from raytune_suite.cluster import check_cluster_file

    check_cluster_file(args.file)
    print(f"{args.file}: ok (schema and security rules)")
    return 0


_COMMANDS = {"run": _run, "validate": _validate, "resume": _resume, "best": _best,
             "submit": _submit, "status": _status, "cluster": _cluster,
             "mlflow-sync": _mlflow_sync, "report": _report, "plan": _plan,
             "extend": _extend}


if __name__ == "__main__":
    sys.exit(main())
