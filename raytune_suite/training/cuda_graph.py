"""The training step as CUDA graphs (GPU only): one launch per batch instead of hundreds.

At the batch sizes people search (32-128) a small network's step on a GPU is bound by
Python and kernel launches, not by the GPU (issue 16: one CNN trial at batch 128 drove an
H200 at under a third of its batch-512 rate). Here the whole step -- forward under
autocast, loss, backward, gradient clipping and the optimizer's update -- is captured once
per batch size (an epoch's last, partial batch gets a second graph) and replayed with the
batch copied into the graph's static input buffers, as in PyTorch's "whole network
capture" recipe (``torch.cuda.graphs``).

What changes from step to step lives on the device, so no step needs a recapture:

- the learning rate is a one-element tensor that the schedule fills in place;
- Adam's step count is a device tensor (``capturable=True``); SGD runs fused, which reads
  the lr tensor on the device;
- the batch's gather, its augmentation (the trial's own ``torch.Generator``) and a
  teacher's logits run eagerly before the replay, without host syncs; dropout inside the
  graph draws from the default CUDA generator, which graphs advance on every replay.

Values a captured kernel holds as plain numbers (weight decay, momentum, the batch size)
change only through a restore or a PBT exploit, and :meth:`GraphedStep.reset` then drops
the graphs so that the next steps capture afresh.

Warm-up, as PyTorch's docs ask: the first ``WARMUP`` steps run eagerly on a side stream
(one step for each later batch size). They are real training steps: nothing is trained
twice, and a capture (which runs nothing) is followed by a replay of that same batch.

A model that cannot be captured (a host sync, an op graphs cannot record) makes the
capture fail, and so does a warm-up step that fails with the capturable optimizer: the
trial says so in one warning, puts its optimizer back in its ordinary form and trains
eagerly from that batch on.
``cuda_graphs: false`` in the config skips the attempt. Checkpoints hold the optimizer in
its ordinary form (a float lr, not capturable), so a GPU trial's checkpoint restores on a
CPU and the other way round.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from raytune_suite.training.config import ClassifierConfig
    from raytune_suite.training.loop import Trainer

WARMUP = 3  # eager steps before the first capture (then 1 for each new batch size)


def unsupported(cfg: "ClassifierConfig") -> Optional[str]:
    """Why this configuration trains without CUDA graphs, or None when it can use them."""
    if not cfg.cuda_graphs:
        return "cuda_graphs: false"
    if cfg.adversarial_eps > 0:
        return "adversarial training runs its own backward passes inside each step"
    return None


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Put ``optimizer`` in the form a captured step needs; after building it and after
    every ``load_state_dict`` (which brings back a checkpoint's ordinary form).

    The lr becomes a one-element tensor on the parameters' device; Adam and AdamW become
    ``capturable`` (their step counts move to the device); SGD becomes ``fused`` (the
    foreach SGD reads a tensor lr on the host, a sync a graph cannot hold)."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        if isinstance(optimizer, torch.optim.SGD):
            group["fused"], group["foreach"] = True, None
        else:
            group["capturable"] = True
            for p in group["params"]:
                step = optimizer.state.get(p, {}).get("step")
                if torch.is_tensor(step) and step.device != p.device:
                    optimizer.state[p]["step"] = step.to(p.device, torch.float32)


def make_ordinary(optimizer: torch.optim.Optimizer) -> None:
    """Undo :func:`make_capturable` on a live optimizer (a float lr, neither capturable
    nor fused): how a trial whose step cannot be graphed goes on training eagerly."""
    for group in optimizer.param_groups:
        _ordinary(group)


def portable(optimizer_state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer ``state_dict`` in its ordinary form (a float lr, neither capturable
    nor fused), as any trainer, on a CPU or a GPU, loads it. A no-op for an optimizer
    that was never made capturable."""
    for group in optimizer_state["param_groups"]:
        _ordinary(group)
    return optimizer_state


def _ordinary(group: dict[str, Any]) -> None:
    """One param group (live, or of a state_dict) back from :func:`make_capturable`."""
    if torch.is_tensor(group.get("lr")):
        group["lr"] = group["lr"].item()
    if group.get("capturable"):
        group["capturable"] = False
    if group.get("fused"):
        group["fused"] = None


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor  # static inputs: each replay reads the batch copied into them
    y: torch.Tensor
    soft: Optional[torch.Tensor]  # a teacher's logits (distillation)
    loss: torch.Tensor  # static output: the replayed batch's loss


class GraphedStep:
    """A trainer's training step, replayed from CUDA graphs (module docstring)."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.graphs: dict[int, _Graph] = {}
        self.eager_steps: Counter = Counter()  # warm-up steps taken, per batch size
        self.side = torch.cuda.Stream(trainer.device)
        self.failed: Optional[str] = None  # why capture failed: the trainer trains eagerly

    def reset(self) -> None:
        """Drop the graphs (a restore or an exploit changed what they captured)."""
        self.graphs.clear()
        self.eager_steps.clear()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor,
                 soft: Optional[torch.Tensor]) -> torch.Tensor:
        """Train on one batch; the batch's loss (a tensor on the device, not synced)."""
        n = len(yb)
        graph = self.graphs.get(n)
        if graph is None:
            try:
                if self.eager_steps[n] < (1 if self.graphs else WARMUP):
                    self.eager_steps[n] += 1
                    return self._eager_on_side_stream(xb, yb, soft)
                graph = self._capture(xb, yb, soft)
            except Exception as err:  # noqa: BLE001 - e.g. this torch's optimizer refuses
                self._give_up(err)    # the capturable form: the ordinary one trains on
                graph = None
            if graph is None:  # failed and said so: this batch and the rest train eagerly
                return self.trainer.eager_step(xb, yb, soft)
            self.graphs[n] = graph
        graph.x.copy_(xb)
        graph.y.copy_(yb)
        if graph.soft is not None:
            graph.soft.copy_(soft)
        graph.graph.replay()
        return graph.loss

    def _eager_on_side_stream(self, xb, yb, soft) -> torch.Tensor:
        current = torch.cuda.current_stream(self.trainer.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            loss = self.trainer.eager_step(xb, yb, soft)
        current.wait_stream(self.side)
        return loss

    def _body(self, x: torch.Tensor, y: torch.Tensor,
              soft: Optional[torch.Tensor]) -> torch.Tensor:
        """What the graph records: the eager step without ``zero_grad`` (the captured
        backward writes the gradients afresh on every replay)."""
        t = self.trainer
        # No autocast weight cache inside a graph: its cached casts would be stale.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=t.cfg.amp,
                            cache_enabled=False):
            loss = t.criterion(t.model(t.prepare(x)), y, soft)
        loss.backward()
        if t.cfg.grad_clip:
            nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip, foreach=True)
        t.optimizer.step()
        return loss

    def _capture(self, xb, yb, soft) -> Optional[_Graph]:
        x, y = xb.clone(), yb.clone()
        s = None if soft is None else soft.clone()
        self.trainer.optimizer.zero_grad(set_to_none=True)  # the graph allocates its own
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss = self._body(x, y, s)
        except Exception as err:  # noqa: BLE001 - any failure means: train eagerly
            self._give_up(err)
            return None
        # Detached: the captured autograd graph (its gradient accumulators, made on the
        # capture's stream) must not outlive the capture into the next batch size's eager
        # warm-up and capture, which run on other streams. Replays still write this storage.
        return _Graph(graph, x, y, s, loss.detach())

    def _give_up(self, err: BaseException) -> None:
        try:
            torch.cuda.synchronize(self.trainer.device)
        except Exception:  # noqa: BLE001 - the eager steps will say if the GPU broke
            pass
        self.trainer.optimizer.zero_grad(set_to_none=True)
        make_ordinary(self.trainer.optimizer)
        self.graphs.clear()
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        self.failed = f"{type(err).__name__}: {reason}"
        warnings.warn(f"cuda_graphs: the training step could not be captured ({self.failed}); "
                      "this trial trains without CUDA graphs (set cuda_graphs: false to skip "
                      "the attempt)", RuntimeWarning, stacklevel=3)
