"""MLflow: one experiment per experiment file, a parent run for the search, one child
run per trial, named and labelled so that the MLflow UI shows what the leaderboard shows.

Everything is logged from the driver's machine, by a writer in a process of its own
(``_writer`` run by ``_writer_process``), so workers never need access to the tracking
store and the driver loop neither waits on it nor shares its GIL with it.
``TrialRunsCallback`` (which imports Ray) loads on first use.
"""

from raytune_suite.tracking._backfill import backfill_runs
from raytune_suite.tracking._mlflow import (check_reachable, configure_client, flatten,
                                            metric, mlflow_client, param,
                                            resolve_tracking_uri, short_reason, tag,
                                            warm_up)
from raytune_suite.tracking._model_registry import register_best_model
from raytune_suite.tracking._names import (SKIP_METRICS, Layout, layout,
                                           result_metrics, run_name)
from raytune_suite.tracking._runs import (EXPERIMENT_PATH_TAG, OUTCOME_TAG, ROLE_TAG,
                                          STOP_REASON_TAG, TRIAL_ID_TAG, child_runs,
                                          close_open_runs, close_trial_run, discard_search,
                                          end_tags, find_trial_run)
from raytune_suite.tracking._search import (DESCRIPTION_TAG, EPOCHS_METRIC, EXPLOIT_TAG,
                                            PARETO_TAG, RANK_TAG, finish_search_run, leaderboard_csv,
                                            leaderboard_markdown, log_report,
                                            record_leaderboard, reopen_run,
                                            start_search_run)
from raytune_suite.tracking._writer_process import prestart as prestart_writer
from raytune_suite.tracking._writer_process import stop_spare as stop_spare_writer
from raytune_suite.tracking._ui import mlflow_executable, ui_command, ui_hint, ui_link

__all__ = ["backfill_runs", "end_tags", "check_reachable", "configure_client", "flatten",
           "metric", "mlflow_client", "param", "tag", "resolve_tracking_uri", "short_reason",
           "warm_up", "prestart_writer", "stop_spare_writer",
           "SKIP_METRICS", "Layout", "layout", "result_metrics", "run_name",
           "EXPERIMENT_PATH_TAG", "OUTCOME_TAG", "ROLE_TAG", "STOP_REASON_TAG", "TRIAL_ID_TAG",
           "child_runs", "close_open_runs", "close_trial_run", "discard_search", "find_trial_run",
           "DESCRIPTION_TAG", "EPOCHS_METRIC", "EXPLOIT_TAG", "RANK_TAG", "PARETO_TAG",
           "finish_search_run",
           "leaderboard_csv", "leaderboard_markdown", "log_report", "record_leaderboard",
           "reopen_run", "start_search_run", "mlflow_executable", "ui_command", "ui_hint",
           "ui_link", "TrialRunsCallback", "register_best_model"]


def __getattr__(name: str):
    if name == "TrialRunsCallback":
        from raytune_suite.tracking._callback import TrialRunsCallback

        return TrialRunsCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
