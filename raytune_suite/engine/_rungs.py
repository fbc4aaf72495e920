"""How much a scheduler trains: the arithmetic of Ray Tune's ASHA, HyperBand and PBT.

Pure (no Ray, no numpy, no torch): :mod:`raytune_suite.engine.plan` turns an experiment
file into these numbers. Every count is in the scheduler's ``time_attr`` units (epochs
for ``training_iteration``), and each function says which assumptions its ``low`` and
``high`` hold under.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass, field

LOW_QUANTILE, HIGH_QUANTILE = 0.01, 0.99  # ASHA's range: 98% of modelled searches
_WORK = 300_000  # trial-rung decisions simulated per plan (about 0.2 s of Python)


@dataclass(frozen=True)
class Estimate:
    """Time units a whole search trains, as ``low`` <= ``expected`` <= ``high``."""

    low: float
    expected: float
    high: float
    rungs: list = field(default_factory=list)  # (milestone, trials expected to reach it)
    halving: float | None = None  # ASHA: synchronous successive halving's count


def asha_rungs(grace: float, eta: float, max_t: float, s: int = 0) -> list[float]:
    """Milestones of bracket ``s`` of Ray's ASHA (``async_hyperband._Bracket``) that can
    stop a trial: r * eta^(k+s), counted as Ray counts them, strictly below ``max_t``
    (a trial reaching ``max_t`` is stopped before any rung sees it)."""
    count = int(math.log(max_t / grace) / math.log(eta) - s + 1)
    return [m for m in (grace * eta ** (k + s) for k in range(max(count, 0))) if m < max_t]


def asha_cutoff(recorded: list[float], eta: float) -> float:
    """Ray's cutoff at a rung: the (1 - 1/eta) percentile of the values recorded there so
    far, linearly interpolated as ``np.nanpercentile`` does; ``recorded`` sorted."""
    position = (1 - 1 / eta) * (len(recorded) - 1)
    lo = math.floor(position)
    hi = min(lo + 1, len(recorded) - 1)
    return recorded[lo] + (recorded[hi] - recorded[lo]) * (position - lo)


def pass_probability(m: int, eta: float) -> float:
    """The chance that the (m+1)-th trial to reach a rung passes it, when the values
    reach the rung in random order: 1 with no rival recorded, else (m/eta + 1 - 1/eta) /
    (m + 1), which falls from 1/2 towards 1/eta ("early trials pass for lack of rivals").
    Its rank among the m+1 values is uniform; the cutoff sits at rank position
    (1 - 1/eta)(m - 1)."""
    return 1.0 if m == 0 else (m / eta + 1 - 1 / eta) / (m + 1)


def halving_count(n: int, milestones: list[float], eta: float, max_t: float) -> float:
    """Synchronous successive halving: n/eta^k trials reach rung k and the rest stop
    there; sum_k (n_k - n_(k+1)) * milestone_k + n_K * max_t. ASHA trains this only when
    each trial meets every rival of its rung; it meets just those that came first."""
    reach = [n / eta ** k for k in range(len(milestones) + 1)]
    return sum((reach[k] - reach[k + 1]) * m for k, m in enumerate(milestones)) + \
        reach[-1] * max_t


def asha_epochs(n: int, grace: float, eta: float, max_t: float, brackets: int = 1,
                seed: int = 0, length: float | None = None,
                improving_after: int | None = None) -> Estimate:
    """ASHA's training of ``n`` trials, by Ray's own rule replayed on modelled searches;
    a trial that passes every rung trains ``length`` (default ``max_t``; less when the
    trainable ends sooner by itself).

    The model (stated, not fitted): each trial has a fixed quality that ranks it the same
    at every rung (a trial's curve does not cross another's), the searcher's trials come
    in random order of quality, and each rung sees the trials in the order they passed
    the rung before. A trial stops at a rung when its value is below
    :func:`asha_cutoff` of the values recorded there before it (none recorded: it
    passes), exactly as ``_Bracket.on_result`` decides; with several brackets each trial
    joins one at random, with Ray's softmax over bracket sizes. Every ordering of up to 7
    trials is replayed (exact); larger searches are sampled (fixed seed, so a plan is
    the same each time).

    Args:
        improving_after: a searcher that learns (HyperOpt's TPE after its
            ``n_initial_points`` random trials) proposes better trials later, and more of
            them pass. How much better depends on the space; the two ends are modelled:
            random order, and every trial after the first ``improving_after`` better than
            all of those (in random order among themselves).

    Returns:
        ``expected``: the mean over the modelled searches (with ``improving_after``,
        midway between the means of the two ends); ``low``: the 1st percentile of the
        searches in random order; ``high``: the 99th, of the improving ones when given.
        ``halving``: :func:`halving_count` for comparison.
    """
    sizes = [max(int(math.log(max_t / grace) / math.log(eta) - s + 1), 0)
             for s in range(brackets)]
    weights = [math.exp(size - max(sizes)) for size in sizes]
    length = min(max_t, length or max_t)
    ladders = [[m for m in asha_rungs(grace, eta, max_t, s) if m < length]
               for s in range(brackets)]
    if n <= 0:
        return Estimate(0, 0, 0, [(m, 0.0) for m in ladders[0]], 0.0)
    k = improving_after if improving_after and 0 < improving_after < n else None
    exact = brackets == 1 and n <= 7
    rng = random.Random(seed)
    sims = max(200, min(20_000, _WORK // (n * max(len(ladders[0]), 1) * (2 if k else 1))))
    if exact:
        orders = itertools.permutations(range(n))
    else:
        orders = (rng.sample(range(n), n) for _ in range(sims))
    reached = [0.0] * len(ladders[0])
    totals = _replay(orders, ladders, weights, eta, length, rng, reached)
    runs = len(totals)
    expected, high = sum(totals) / runs, _quantile(totals, HIGH_QUANTILE)
    if k:
        if exact:
            better = (a + b for a, b in itertools.product(
                itertools.permutations(range(k)), itertools.permutations(range(k, n))))
        else:
            better = (rng.sample(range(k), k) + rng.sample(range(k, n), n - k)
                      for _ in range(sims))
        also = [0.0] * len(ladders[0])
        improving = _replay(better, ladders, weights, eta, length, rng, also)
        expected = (expected + sum(improving) / len(improving)) / 2
        reached = [(a / runs + b / len(improving)) / 2 * runs for a, b in zip(reached, also)]
        high = max(high, _quantile(improving, HIGH_QUANTILE))
    return Estimate(_quantile(totals, LOW_QUANTILE), expected, high,
                    [(m, reached[i] / runs) for i, m in enumerate(ladders[0])],
                    halving_count(n, ladders[0], eta, length))


def _replay(orders, ladders: list, weights: list, eta: float, length: float,
            rng: random.Random, reached: list | None = None) -> list[float]:
    """The time units each search trains (sorted), its trials arriving with the
    qualities in ``orders``; ``reached`` adds up who reaches each rung of bracket 0."""
    totals = []
    for order in orders:
        joined = [[] for _ in ladders]
        for quality in order:
            b = 0 if len(ladders) == 1 else rng.choices(range(len(ladders)), weights)[0]
            joined[b].append(quality)
        total = 0.0
        for b, (members, ladder) in enumerate(zip(joined, ladders)):
            for k, milestone in enumerate(ladder):
                if b == 0 and reached is not None:
                    reached[k] += len(members)
                recorded, passed = [], []
                for q in members:
                    if not recorded or q >= asha_cutoff(recorded, eta):
                        passed.append(q)
                    else:
                        total += milestone
                    bisect.insort(recorded, q)
                members = passed
            total += len(members) * length
        totals.append(total)
    return sorted(totals)


def _quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted ``values`` (the lowest value with at least q below)."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def hyperband_epochs(n: int, max_t: float, eta: float, stop_last_trials: bool = True,
                     every: int | None = 1, at_once: int | None = None) -> Estimate:
    """Ray's (synchronous) HyperBand: trials fill brackets s = 0, 1, ... of each band in
    turn (``HyperBandScheduler.on_trial_add``); bracket s takes ceil(s_max/(s+1) *
    eta^s) trials and trains them all to int(max_t / eta^s), then keeps the best
    ceil(n/eta) (of its planned size, so a partly filled bracket may keep all it has)
    for eta times longer, s times; a bracket whose first rung rounds to 0 is skipped.

    Args:
        every: checkpoint interval of the trainable (None: unknown, it may restart from
            scratch). A trial waiting for its bracket is paused and resumes from its
            newest checkpoint, training again what came after it.
        at_once: trials that run at once, None if unknown. A bracket larger than that
            may halve before it fills (Ray halves the trials started so far when no
            other waits), and more of its trials then run on.

    Returns:
        ``low``: the arithmetic with nothing trained again; ``expected``: with each
        resumed trial training again the epochs since its checkpoint; ``high``: that,
        or, when a bracket may halve before it fills, every trial trained to max_t.
    """
    s_max = int(round(math.log(max_t) / math.log(eta))) + 1
    plain = again = 0.0
    left, largest = n, 0
    while left > 0:
        for s in range(s_max):
            r = int(max_t * eta ** -s)
            if left <= 0 or r == 0:
                continue
            planned = math.ceil(s_max / (s + 1) * eta ** s)
            live = min(planned, left)
            left -= live
            largest = max(largest, live)
            plain += live * r
            stages = list(itertools.accumulate(range(s), lambda t, _: int(min(t * eta, max_t)),
                                               initial=r))[1:]  # as Ray rounds each step
            if not stop_last_trials:
                stages.append(int(max_t))
            for k, grown in enumerate(stages):
                if k < s:
                    planned = math.ceil(planned / eta)
                    live = min(live, planned)
                plain += live * max(grown - r, 0)
                again += live * ((r % every) if every else r)
                r = max(grown, r)
    expected = plain + again
    fills = at_once is None or at_once >= largest
    return Estimate(plain, expected, expected if fills else max(expected, n * max_t + again))


def pbt_quantile_size(n: int, fraction: float) -> int:
    """Trials in PBT's lower (and upper) quantile of ``n``, as Ray's ``_quantiles``."""
    if n <= 1:
        return 0
    size = math.ceil(n * fraction)
    return math.floor(n / 2) if size > n / 2 else size


def pbt_rounds(epochs: int, interval: int, burn_in: int = 0) -> int:
    """Perturbations a trial goes through: at the first result at or past both the
    burn-in and one interval, then every interval, never at its last result (the stop
    rule ends the trial before the scheduler sees it)."""
    first = max(interval, burn_in)
    return len(range(first, epochs, interval)) if first < epochs else 0


def pbt_epochs(n: int, epochs: int, interval: int, burn_in: int, fraction: float,
               synch: bool, waves: bool) -> tuple[Estimate, int]:
    """Training of ``n`` PBT trials of ``epochs`` each, with their exploits.

    An exploit restarts a trial from its donor's checkpoint: the epochs between that
    checkpoint and where the trial was are trained again, or, when the donor is ahead,
    skipped. The suite's PBT (``engine.pbt``) never sends a trial back more than one
    ``interval``. Each of the P rounds, the lower quantile (L trials) exploits.

    Args:
        waves: trials progress in waves of one interval (more trials than run at once:
            Ray's PBT pauses each at every perturbation and runs the least trained one
            next), so no donor is ahead of its receiver.

    Returns:
        (estimate, P * L). ``expected``: n * epochs + P * L * interval/2 (asynchronous:
        the donor's checkpoint is from this round or the one before, as likely either;
        synchronous: all checkpoints are from this round, nothing retrained).
        ``high``: every trial exploiting at every round (asynchronous; L a round when
        synchronous) one interval back. ``low``: n * epochs, less one interval per
        exploit when trials all run at once (a donor may then be ahead).
    """
    rounds, lower = pbt_rounds(epochs, interval, burn_in), pbt_quantile_size(n, fraction)
    base = n * epochs
    most = rounds * (lower if synch else n)
    expected = base if synch else base + rounds * lower * interval / 2
    low = base if waves or synch else max(base - most * interval, n * min(epochs, interval))
    return Estimate(low, expected, base + most * interval), rounds * lower
