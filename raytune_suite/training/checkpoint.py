"""Self-describing, verified checkpoints.

A checkpoint folder holds ``checkpoint.pt`` (model, optimizer, epoch, config, RNG
states, ...) and ``meta.json`` with its SHA-256. Loading checks the digest, reads
with ``weights_only=True`` and names the folder in every error: a corrupt checkpoint
is an error, never a silent restart from epoch 0.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from raytune_suite.errors import CheckpointError

STATE_FILE = "checkpoint.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "optimizer", "epoch", "config")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_digest(model_state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model's weights (names, dtypes, shapes and values), device-independent.

    Lets a restored trial prove which weights it started from (PBT exploits).
    """
    h = hashlib.sha256()
    for name, tensor in model_state.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot be viewed
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` into ``directory`` with its digest; returns the folder."""
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state must hold {', '.join(REQUIRED_KEYS)}; "
                         f"missing {', '.join(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    meta = {"format": FORMAT_VERSION, "sha256": _sha256(directory / STATE_FILE),
            "epoch": int(state["epoch"]), "model_digest": model_digest(state["model"])}
    (directory / META_FILE).write_text(json.dumps(meta))
    return directory


def load(directory: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint folder written by :func:`save`.

    Raises:
        CheckpointError: missing files, digest mismatch (truncated or altered),
            unreadable contents or missing keys; the message names the folder.
    """
    directory = Path(directory)
    state_path, meta_path = directory / STATE_FILE, directory / META_FILE
    if not state_path.is_file() or not meta_path.is_file():
        raise CheckpointError(f"checkpoint {directory}: missing {STATE_FILE} or {META_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
        expected = meta["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {directory}: unreadable {META_FILE} ({e})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {directory}: format {meta.get('format')!r}, "
                              f"this version reads format {FORMAT_VERSION}")
    actual = _sha256(state_path)
    if actual != expected:
        raise CheckpointError(f"checkpoint {directory}: {STATE_FILE} does not match its "
                              "digest (truncated or corrupt)")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"checkpoint {directory}: cannot read {STATE_FILE} "
                              f"({type(e).__name__}: {e})") from None
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {directory}: missing {', '.join(missing)}")
    state["_path"] = str(directory)
    return state


def load_into(state: dict[str, Any], model: torch.nn.Module,
              optimizer: torch.optim.Optimizer | None = None) -> None:
    """Restore weights (and optimizer state); a shape mismatch names the checkpoint."""
    where = state.get("_path", "<memory>")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"checkpoint {where} does not fit this model: {detail}") from None
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {where}: optimizer state does not fit "
                                  f"({e})") from None
