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

    res = sub.add_parser("resume", help="finish an interrupted experiment")
    res.add_argument("experiment", help="a results folder, or a name under ./ray_results")
    res.add_argument("--address")
    add_verbose(res)

    best = sub.add_parser("best", help="best config, metric and checkpoint of an experiment")
    best.add_argument("experiment")
    best.add_argument("--json", action="store_true", help="machine-readable output")
    best.add_argument("--evaluate", action="store_true",
                      help="score the best checkpoint on the held-out test split "
                           "(built-in classifier)")
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
                                                progress=_progress(args)))
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


def _print_outcome(outcome) -> int:
    """Print the end of a search; its exit status (3 when trials errored)."""
    from raytune_suite.engine.runner import mlflow_hint
    from raytune_suite.report import leaderboard

    spec = outcome.spec
    diverged = [t for t in outcome.trials if t.status == "DIVERGED"]
    print()
    print(f"{spec.name}: {len(outcome.trials)} trials, {outcome.errors} errored, "
          f"{len(diverged)} diverged; top {min(5, len(outcome.trials))} by {spec.metric} "
          f"({spec.mode}):")
    print(leaderboard(outcome.trials, spec.metric))
    counts = outcome.outcomes
    print("outcomes: " + ", ".join(f"{n} {name.replace('_', ' ')}"
                                   for name, n in sorted(counts.items())))
    if outcome.pbt:
        p = outcome.pbt
        print(f"pbt:     {p['exploits']} exploits ({p['retrained']} epochs retrained), "
              f"{p['skipped']} skipped for want of a recent donor checkpoint")
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
    if args.evaluate:
        payload["test"] = _evaluate(outcome, best)
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
    return 0


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
             "mlflow-sync": _mlflow_sync, "report": _report}


if __name__ == "__main__":
    sys.exit(main())
