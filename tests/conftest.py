import os

# Workers share this venv; never let Ray re-package the checkout under `uv run`.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")

import pytest  # noqa: E402


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty working directory (where results and mlflow.db would land)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_configure(config):
    """Before xdist starts its workers: make sure Ray's token file exists, so parallel
    workers' first `ray.init` calls do not each write a different token to it."""
    if hasattr(config, "workerinput"):
        return
    from ray._private.authentication.authentication_token_setup import (
        _get_default_token_path, generate_and_save_token)

    if not _get_default_token_path().exists():
        generate_and_save_token()


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where CUDA is available (never in CI)."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip)
