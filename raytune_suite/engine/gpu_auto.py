"""``resources.gpu: auto``: how many trials to pack on one GPU, from measurements.

Pure: measurements in, a decision out (issue 16). The probe that measures (one
configuration trained alone, then k copies at once, on the GPU that will run the trials)
is separate; this module only decides, so the rule is tested on recorded figures.

The rule: start at one trial per GPU and double k while both hold for the next k --
  * it is faster: the aggregate samples/s at k is at least ``MIN_GAIN`` times that at k/2
    (past the point where the GPU is busy, more trials only share it);
  * it fits: k trials' peak memory, plus a ``MEMORY_MARGIN`` share of the GPU's memory
    for allocator fragmentation and the CUDA context of each process, is at most the
    GPU's memory -- and the probe at k did not run out of memory.
Doubling stops at the first k that fails, so a noisy gain at 8 cannot lift a choice that
already stopped paying at 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

MIN_GAIN = 1.15  # aggregate samples/s at k over k/2
MEMORY_MARGIN = 0.20  # share of the GPU's memory kept free
PACKINGS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Measurement:
    """The probe at k trials on one GPU (None fields: that k ran out of memory)."""

    k: int
    samples_per_s: Optional[float]  # all k trials together
    peak_memory_bytes: Optional[int]  # per trial (torch.cuda.max_memory_allocated)

    @property
    def failed(self) -> bool:
        return self.samples_per_s is None or self.peak_memory_bytes is None


@dataclass(frozen=True)
class Decision:
    """How many trials share a GPU, and why."""

    k: int  # trials per GPU; 0: no GPU, trials run on CPU
    reasons: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> float:
        """The ``resources.gpu`` this means (0.0: CPU trials)."""
        return 1.0 / self.k if self.k else 0.0

    def line(self) -> str:
        if not self.k:
            return f"gpu: auto -> {self.reasons[0] if self.reasons else 'no GPU'}: " \
                "trials run on CPU"
        return f"gpu: auto -> {self.k} trial(s) per GPU (gpu: {self.gpu:g}); " + \
            "; ".join(self.reasons)


def decide(measurements: list[Measurement], gpu_memory_bytes: Optional[int]) -> Decision:
    """The packing ``resources.gpu: auto`` picks (module docstring: the rule).

    Args:
        measurements: the probe's figures, at k = 1 and any of 2, 4, 8.
        gpu_memory_bytes: the GPU's total memory; None when there is no GPU.

    Raises:
        ValueError: there is a GPU but no usable measurement at k = 1 (one trial alone
            does not fit, or was not measured): no fraction of a GPU can run the search.
    """
    if gpu_memory_bytes is None:
        return Decision(0, ["no GPU"])
    by_k = {m.k: m for m in measurements}
    one = by_k.get(1)
    if one is None or one.failed or not _fits(one, gpu_memory_bytes):
        raise ValueError("one trial alone does not fit on this GPU (or was not measured); "
                         "choose a smaller model or batch size")
    chosen, reasons = 1, []
    for k in PACKINGS[1:]:
        m, before = by_k.get(k), by_k[chosen]
        if m is None:
            reasons.append(f"{k} not measured")
            break
        if m.failed:
            reasons.append(f"{k} ran out of memory")
            break
        if not _fits(m, gpu_memory_bytes):
            reasons.append(f"{k} would need {_gib(k * m.peak_memory_bytes)} of "
                           f"{_gib(gpu_memory_bytes)} with a {MEMORY_MARGIN:.0%} margin")
            break
        gain = m.samples_per_s / before.samples_per_s
        if gain < MIN_GAIN:
            reasons.append(f"{k} gains only {gain:.2f}x over {chosen} "
                           f"({m.samples_per_s:,.0f} vs {before.samples_per_s:,.0f} samples/s)")
            break
        reasons.append(f"{k} gains {gain:.2f}x over {chosen}")
        chosen = k
    return Decision(chosen, reasons)


def _fits(m: Measurement, total: int) -> bool:
    return m.k * m.peak_memory_bytes <= (1 - MEMORY_MARGIN) * total


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
