"""The ``grid`` searcher: every combination, run as the nested loops the file writes.

A practitioner's hand grid is nested ``for`` loops: the first hyperparameter written is
the outermost loop, the last one varies fastest, and each one's values come in the order
written. Ray Tune's ``grid_search`` nests by *name* instead (the name first in
alphabetical order varies fastest), so ``{lr, batch_size, weight_decay}`` would run
weight decay as the outer loop whatever the file says. This searcher hands Ray Tune the
same combinations in the file's order, through Ray Tune's ``Searcher`` interface, so
Ray's ``SearchGenerator`` still creates, names, limits (``ConcurrencyLimiter``), saves and
restores the trials.
"""

from __future__ import annotations

import copy
import pickle
from typing import Optional

from ray.tune.search import Searcher


class WrittenOrderGrid(Searcher):
    """Suggest ``points`` one after the other, ``repeat`` times over (``num_samples``),
    then report the search finished."""

    def __init__(self, points: list[dict], repeat: int = 1):
        super().__init__()
        self._points = [copy.deepcopy(p) for p in points]
        self._repeat = max(1, repeat)
        self._next = 0

    @property
    def total(self) -> int:
        return len(self._points) * self._repeat

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict,
                              **spec) -> bool:
        # The searched entries are this searcher's own; ``config`` holds the fixed values
        # Ray Tune merges each suggestion over.
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def suggest(self, trial_id: str):
        if self._next >= self.total:
            return Searcher.FINISHED
        point = copy.deepcopy(self._points[self._next % len(self._points)])
        self._next += 1
        return point

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None,
                          error: bool = False) -> None:
        pass  # a grid does not learn from results

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"points": self._points, "repeat": self._repeat, "next": self._next}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self._points, self._repeat, self._next = state["points"], state["repeat"], state["next"]
