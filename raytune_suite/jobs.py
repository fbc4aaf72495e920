"""Ray Jobs: ship an experiment file and the suite to a cluster, run it there.

The job's runtime_env carries the experiment file (``working_dir``) and this package
(``py_modules``), so the cluster runs exactly the suite version that validated the file.
Its Python environment (Ray, PyTorch, MLflow) is the cluster's own, installed with uv by
the files in ``cluster/``.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Optional

import yaml

import raytune_suite
from raytune_suite.errors import SpecError, token_auth_error
from raytune_suite.engine.registry import check
from raytune_suite.experiment import load_spec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - turned into one clear line below
        raise _address_error(address, e) from None


def _address_error(address: str, e: Exception) -> SpecError:
    text = " ".join(str(e).split())
    if "401" in text or "Unauthorized" in text or "uthenticat" in type(e).__name__ + text:
        return token_auth_error(address)
    return SpecError("--address", f"no Ray dashboard answered there ({text[:200]}); with a "
                                  "launcher cluster run `ray dashboard CLUSTER.yaml` first and "
                                  "use http://127.0.0.1:8265", address)


def _absolute(raw: dict, spec) -> dict:
    """Relative storage and SQLite paths mean the submitter's folder, not the job's
    temporary working_dir (which Ray deletes)."""
    from raytune_suite.tracking import resolve_tracking_uri

    raw = dict(raw)
    if "://" not in spec.storage:
        raw["storage"] = str(Path(spec.storage).expanduser().resolve())
    tracking = dict(raw.get("tracking") or {})
    tracking["mlflow"] = {**(tracking.get("mlflow") or {}),
                          "tracking_uri": resolve_tracking_uri(spec.tracking.mlflow.tracking_uri)}
    raw["tracking"] = tracking
    return raw


def submit(file: str, overrides: list[str], address: str, wait: bool = True,
           printer=print) -> tuple[str, Optional[str]]:
    """Validate ``file`` locally, then submit it as a Ray Job.

    Returns:
        The job id and, with ``wait``, its final status (after streaming its logs).
    """
    spec, raw = load_spec(file, overrides)  # mistakes end here, before the cluster is asked
    check(spec)
    raw = _absolute(raw, spec)
    py_modules = [str(Path(raytune_suite.__file__).parent)]
    if ":" in spec.trainable and not spec.trainable.startswith("raytune_suite"):
        module = __import__(spec.trainable.split(":")[0].split(".")[0])
        origin = Path(module.__file__)
        py_modules.append(str(origin.parent if origin.name == "__init__.py" else origin))
    client = _client(address)
    with tempfile.TemporaryDirectory(prefix="raytune-job-") as folder:
        (Path(folder) / "experiment.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        try:
            job_id = client.submit_job(
                entrypoint="python -m raytune_suite.cli run experiment.yaml --address auto",
                submission_id=f"raytune-{spec.name}-{uuid.uuid4().hex[:8]}",
                runtime_env={
                    "working_dir": folder,
                    "py_modules": py_modules,
                    "env_vars": {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
                                 "PYTHONUNBUFFERED": "1"},
                },
                metadata={"raytune_suite.experiment": spec.name},
            )
        except Exception as e:  # noqa: BLE001
            raise _address_error(address, e) from None
    printer(f"submitted job {job_id} to {address}")
    if not wait:
        printer(f"follow it with: raytune-suite status {job_id} --address {address}")
        return job_id, None
    return job_id, follow(client, job_id, printer)


def follow(client, job_id: str, printer=print) -> str:
    """Stream a job's logs until it ends; its final status."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            printer(lines, end="")

    asyncio.run(tail())
    return _state(client.get_job_status(job_id))


def _state(job_status) -> str:
    return str(getattr(job_status, "value", job_status))


def status(job_id: str, address: str, logs: bool = False, printer=print) -> str:
    """Print a job's status (and logs); return the status."""
    client = _client(address)
    try:
        info = client.get_job_info(job_id)
    except Exception as e:  # noqa: BLE001
        text = str(e)
        if "404" in text or "does not exist" in text:
            raise SpecError("JOB", "no such job on this cluster", job_id) from None
        raise _address_error(address, e) from None
    state = _state(info.status)
    printer(f"{job_id}: {state}" + (f" ({info.message})" if info.message else ""))
    if logs:
        printer(client.get_job_logs(job_id), end="")
    return state

