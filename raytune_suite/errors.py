"""User-facing errors: each names the field, the rule and the value."""

from __future__ import annotations

import json
from typing import Any


def show(value: Any) -> str:
    """Render a user value compactly, the way it would be written in YAML/JSON."""
    if isinstance(value, str):
        return repr(value)
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's text on one line (whitespace, newlines included, collapsed), cut to
    ``limit`` characters: for a user-facing message that quotes what a library raised."""
    return " ".join(str(error).split())[:limit]


class SpecError(Exception):
    """A mistake in the experiment file or the command line (exit status 2).

    Args:
        field: dotted path of the offending field, e.g. ``search_space.lr``.
        rule: what must hold, e.g. ``low < high must hold``.
        value: what was received.
    """

    _MISSING = object()

    def __init__(self, field: str, rule: str, value: Any = _MISSING):
        self.field = field or "<file>"
        self.rule = rule
        self.value = value
        got = "nothing" if value is SpecError._MISSING else show(value)
        super().__init__(f"{self.field}: {rule}, got {got}")


class SpecErrors(SpecError):
    """Several independent mistakes, reported one per line."""

    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        first = errors[0]
        super().__init__(first.field, first.rule, first.value)
        Exception.__init__(self, "\n".join(str(e) for e in errors))


def token_auth_error(address: str) -> SpecError:
    """The cluster refused us: Ray's token authentication (on by default since 2.60)."""
    return SpecError("--address", "the cluster refused the request: token authentication "
                                  "failed; set RAY_AUTH_MODE=token and provide the cluster's "
                                  "token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or "
                                  "RAY_AUTH_TOKEN)", address)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted: corrupt, truncated or for another model."""


class Interrupted(Exception):
    """The search was stopped by the user (Ctrl-C); its state is saved and resumable."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"interrupted; the experiment is saved at {path}")
