"""Training and evaluation on in-memory tensors that already sit on the trial's device.

Batches are indexed straight from the tensors (no DataLoader, no worker processes);
augmentation runs batched on the same device. :class:`Trainer` owns everything one
trial trains and can save and restore it exactly, without Ray.

Three techniques join the loop when their keys are set, each in its own module:
adversarial training (:mod:`adversarial`), knowledge distillation (:mod:`distill`) and
compression measured at every evaluation (:mod:`compress`). With their keys left at their
defaults the loop runs exactly as without them and reports the same metrics.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Any

import torch
from torch import nn

from raytune_suite.training import adversarial, compress, cuda_graph, distill
from raytune_suite.training.augment import augment_strength
from raytune_suite.training.config import ClassifierConfig
from raytune_suite.training.models import build_model


def make_optimizer(cfg: ClassifierConfig, params) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam or AdamW as the config says."""
    opt = cfg.optimizer_config()
    params = [p for p in params if p.requires_grad]
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.base_lr, momentum=opt.momentum,
                               nesterov=opt.nesterov and opt.momentum > 0,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.base_lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: ClassifierConfig, progress: float) -> float:
    """Multiplier on the base lr after ``progress`` epochs (fractional, per batch).

    A function of progress rather than a stateful scheduler object (as nanoGPT's
    ``get_lr``): a restored trial resumes the exact value, and a PBT exploit that
    changes the base lr or the batch size cannot put the schedule out of step.

    ``step``: x ``lr_gamma`` at each epoch in ``lr_milestones`` (x0.1 at 10/20/30);
    ``exponential``: x ``lr_gamma`` per epoch; ``cosine``: to 0 over the run;
    ``onecycle``: from lr/25 up to lr (first 30% or the warm-up) and down to lr/1e5
    (torch's OneCycleLR defaults). ``warmup_epochs`` of linear warm-up precede the others.
    """
    warm, total = cfg.warmup_epochs, cfg.epochs
    if cfg.lr_schedule == "onecycle":
        peak = warm if warm else 0.3 * total
        if progress < peak:
            return _cos_between(1 / 25, 1.0, progress / peak)
        return _cos_between(1.0, 1 / 25 / 1e4, (progress - peak) / max(total - peak, 1e-9))
    if progress < warm:
        return (progress + 1e-9) / warm
    if cfg.lr_schedule == "step":
        return cfg.lr_gamma ** sum(progress >= m for m in cfg.lr_milestones)
    if cfg.lr_schedule == "exponential":
        return cfg.lr_gamma ** math.floor(progress - warm)
    if cfg.lr_schedule == "cosine":
        span = max(total - warm, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(progress - warm, span) / span))
    return 1.0


def _cos_between(start: float, end: float, fraction: float) -> float:
    fraction = min(max(fraction, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * fraction))


def classification_metrics(logits: torch.Tensor, y: torch.Tensor,
                           num_classes: int) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 (classes never predicted count as 0)."""
    pred = logits.argmax(1)
    confusion = torch.bincount(y * num_classes + pred, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes).double()
    tp = confusion.diag()
    precision = tp / confusion.sum(0).clamp(min=1)
    recall = tp / confusion.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = confusion.sum(1) > 0  # macro over classes present in this split
    return {
        "accuracy": (tp.sum() / max(len(y), 1)).item(),
        "precision": precision[present].mean().item(),
        "recall": recall[present].mean().item(),
        "f1_macro": f1[present].mean().item(),
    }


class Trainer:
    """One trial's model, optimizer, LR schedule, RNG and early-stopping state."""

    def __init__(self, cfg: ClassifierConfig, data, device: torch.device | str = "cpu",
                 train: bool = True):
        self.cfg, self.data = cfg, data
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.model = build_model(cfg, data.input_shape, data.num_classes).to(self.device)
        if self.on_gpu and cfg.channels_last and len(data.input_shape) == 3:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Only to score a checkpoint: no optimizer (torch's first one imports torch._dynamo,
        # ~2 s on a CPU).
        self.optimizer = make_optimizer(cfg, self.model.parameters()) if train else None
        # On a GPU the training step replays CUDA graphs (module cuda_graph); on a CPU, and
        # where the config cannot use them, it runs eagerly as it always has.
        self.graphs: cuda_graph.GraphedStep | None = None
        if train and self.on_gpu and cuda_graph.unsupported(cfg) is None:
            cuda_graph.make_capturable(self.optimizer)
            self.graphs = cuda_graph.GraphedStep(self)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.epoch = 0
        self.best_val_loss = math.inf
        self.epochs_without_improvement = 0
        self.diverged: str | None = None  # why training cannot go on (a NaN or inf loss)
        self.teacher: nn.Module | None = None  # distillation's (only to train)
        self.teacher_logits: torch.Tensor | None = None  # its logits on the training split
        if train and cfg.distill_from:
            self._load_teacher(cfg.distill_from)
        # Latency depends on the architecture and the compression, not on the weights'
        # values (dense kernels skip no zeros): measured once per setting, not per epoch.
        self._latency: dict[tuple, float] = {}
        self._cpu_val: tuple[torch.Tensor, torch.Tensor] | None = None

    def _load_teacher(self, path: str) -> None:
        data = self.data
        self.teacher = distill.load_teacher(path, data.input_shape, data.num_classes,
                                            self.device)
        if self.on_gpu and self.cfg.channels_last and len(data.input_shape) == 3:
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
        if not self._augments(data.x_train):  # the same every epoch: computed once
            self.teacher_logits = self.predict(data.x_train, model=self.teacher)

    # ------------------------------------------------------------------ epochs

    def _autocast(self):
        if self.on_gpu and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory format the model runs in (channels_last on a GPU)."""
        if self.on_gpu and self.cfg.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _augments(self, x: torch.Tensor) -> bool:
        return self.cfg.augment > 0 and x.dim() == 4

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model(self.prepare(x))

    def _set_lr(self, progress: float) -> None:
        lr = self.cfg.base_lr * lr_factor(self.cfg, progress)
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):  # a graphed step reads it on the device
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    @property
    def lr(self) -> float:
        """The learning rate the last step used (a float, wherever it lives)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def train_epoch(self, max_batches: int | None = None) -> float:
        """One pass over the training split in a random order (its first ``max_batches``
        batches if given); the mean training loss."""
        cfg, x, y = self.cfg, self.data.x_train, self.data.y_train
        self.model.train()
        order = torch.randperm(len(y), generator=self.generator, device=self.device)
        total = torch.zeros((), device=self.device)
        end = len(y) if max_batches is None else min(len(y), max_batches * cfg.batch_size)
        for start in range(0, end, cfg.batch_size):
            self._set_lr(self.epoch + start / len(y))
            idx = order[start:start + cfg.batch_size]
            xb, yb = x[idx], y[idx]
            if self._augments(xb):
                xb = augment_strength(xb, cfg.augment, self.generator, flip=cfg.flip_images)
            soft = self._teacher_logits(xb, idx)
            if self.graphs is not None:
                loss = self.graphs(xb, yb, soft)
                if self.graphs.failed:  # it said so once; eager from here on
                    self.graphs = None
            else:
                loss = self.eager_step(xb, yb, soft)
            total += loss.detach() * len(yb)  # no .item(): no host sync per batch
        return (total / max(end, 1)).item()

    def train_steps(self, batches: int) -> int:
        """Train ``batches`` batches, across epochs, without validating or counting epochs:
        to measure the step's speed (``gpu: auto``'s probe). The samples trained."""
        per_epoch = math.ceil(len(self.data.y_train) / self.cfg.batch_size)
        samples = 0
        while batches > 0:
            take = min(batches, per_epoch)
            self.train_epoch(max_batches=take)
            samples += min(len(self.data.y_train), take * self.cfg.batch_size)
            batches -= take
        return samples

    def eager_step(self, xb: torch.Tensor, yb: torch.Tensor,
                   soft: torch.Tensor | None) -> torch.Tensor:
        """One optimisation step on a batch, op by op; its loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(xb, yb, soft)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        # Detached: a loss kept alive (the caller's loop variable) would keep this step's
        # autograd graph alive, and with it the gradient accumulators of the stream it ran
        # on, into the next CUDA-graph capture (torch warns of the stream mismatch).
        return loss.detach()

    def _teacher_logits(self, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        """Distillation's soft targets for the batch (on the clean inputs); else None."""
        if self.teacher is None:
            return None
        if self.teacher_logits is not None:
            return self.teacher_logits[idx]
        return self.predict(xb, model=self.teacher)

    def _loss(self, xb: torch.Tensor, yb: torch.Tensor,
              soft: torch.Tensor | None) -> torch.Tensor:
        """The batch's training loss (:meth:`criterion`); with adversarial training, on a
        batch whose second half is perturbed."""
        if self.cfg.adversarial_eps > 0:
            xb = self._perturb_half(xb, yb)
        with self._autocast():
            return self.criterion(self.model(self.prepare(xb)), yb, soft)

    def criterion(self, logits: torch.Tensor, yb: torch.Tensor,
                  soft: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy, or the distillation loss against a teacher's logits ``soft``."""
        cfg = self.cfg
        if soft is None:
            return nn.functional.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        return distill.distillation_loss(logits, soft, yb, cfg.distill_temperature,
                                         cfg.distill_alpha, cfg.label_smoothing)

    def _perturb_half(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The batch with its second half replaced by adversarial examples (see
        :mod:`adversarial` for why half). The attack sees the model in eval mode (no
        dropout noise in its gradients; torchattacks' default too)."""
        cfg, half = self.cfg, len(yb) // 2
        self.model.eval()
        adv = adversarial.perturb(self._forward, xb[half:], yb[half:], cfg.adversarial_method,
                                  cfg.adversarial_eps, cfg.adversarial_steps, self.generator)
        self.model.train()
        return torch.cat([xb[:half], adv])

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1024,
                model: nn.Module | None = None) -> torch.Tensor:
        """Logits for ``x`` (eval mode, float32) of this trial's model, or of ``model``
        (a teacher, a compressed copy) on the device ``x`` is on."""
        model = self.model if model is None else model
        model.eval()
        logits = [torch.zeros(0, self.data.num_classes, device=x.device)]
        for start in range(0, len(x), batch_size):
            with self._autocast():
                logits.append(model(self.prepare(x[start:start + batch_size])).float())
        return torch.cat(logits)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor,
                 model: nn.Module | None = None) -> dict[str, float]:
        """Loss, accuracy and macro precision/recall/F1 on (x, y) (of ``model`` if given)."""
        out = self.predict(x, model=model)
        loss = nn.functional.cross_entropy(out, y).item() if len(y) else math.nan
        return {"loss": loss, **classification_metrics(out, y, self.data.num_classes)}

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, validate, update early stopping; the epoch's metrics."""
        if self.on_gpu:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        train_loss = self.train_epoch()
        seconds = time.perf_counter() - t0
        val = self.evaluate(self.data.x_val, self.data.y_val)
        extra: dict[str, float] = {}
        if self.cfg.adversarial_eps > 0:
            extra["val_robust_accuracy"] = self.robust_accuracy(self.data.x_val,
                                                                self.data.y_val)
        if self.cfg.compressing:  # val_* become the compressed model's
            val, measured = self.evaluate_compressed(val["accuracy"])
            extra.update(measured)
        self.epoch += 1
        if val["loss"] < self.best_val_loss - self.cfg.early_stopping_min_delta:
            self.best_val_loss, self.epochs_without_improvement = val["loss"], 0
        else:
            self.epochs_without_improvement += 1
        bad = [f"{k} is {v}" for k, v in (("train_loss", train_loss), ("val_loss", val["loss"]))
               if not math.isfinite(v)]
        if bad:
            self.diverged = f"diverged at epoch {self.epoch}: {', '.join(bad)}"
        return {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_f1_macro": val["f1_macro"],
            "val_precision": val["precision"],
            "val_recall": val["recall"],
            "lr": self.lr,
            "epoch_seconds": seconds,
            "samples_per_s": len(self.data.y_train) / seconds,
            **extra,
        }

    def robust_accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy of this trial's model on (x, y) under the attack it trains against."""
        cfg = self.cfg
        self.model.eval()
        return adversarial.robust_accuracy(self._forward, x, y, cfg.adversarial_method,
                                           cfg.adversarial_eps, cfg.adversarial_steps,
                                           seed=cfg.seed)

    def evaluate_compressed(self, dense_accuracy: float | None = None
                            ) -> tuple[dict[str, float], dict[str, float]]:
        """The validation metrics of a compressed copy of the model (see :mod:`compress`)
        and what compression measured: ``model_size_kb``, ``nonzero_params``,
        ``latency_ms`` and ``val_accuracy_uncompressed`` (the dense model's, computed
        here unless given)."""
        cfg = self.cfg
        if dense_accuracy is None:
            dense_accuracy = self.evaluate(self.data.x_val, self.data.y_val)["accuracy"]
        quantize = cfg.quantize or "none"
        small = compress.compressed_copy(self.model, cfg.prune_amount or 0.0, quantize)
        x, y = self.data.x_val, self.data.y_val
        if quantize == "int8" and x.device.type != "cpu":  # int8 kernels run on CPU only
            if self._cpu_val is None:
                self._cpu_val = (x.cpu(), y.cpu())
            x, y = self._cpu_val
        val = self.evaluate(x, y, model=small)
        key = (cfg.prune_amount, quantize)
        if key not in self._latency:
            example = self.data.x_val if len(self.data.x_val) else self.data.x_train
            self._latency = {key: compress.latency_ms(small.cpu(),
                                                      compress.latency_batch(example))}
        return val, {"val_accuracy_uncompressed": dense_accuracy,
                     "model_size_kb": compress.model_size_kb(small),
                     "nonzero_params": compress.nonzero_params(small),
                     "latency_ms": self._latency[key]}

    @property
    def should_stop_early(self) -> bool:
        """No val_loss improvement for ``early_stopping_patience`` epochs."""
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.epochs_without_improvement >= patience

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs or self.should_stop_early or bool(self.diverged)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this trial is."""
        return {
            "model": self.model.state_dict(),
            "optimizer": cuda_graph.portable(self.optimizer.state_dict()),
            "lr_schedule": {"name": self.cfg.lr_schedule, "base_lr": self.cfg.base_lr,
                            "factor": lr_factor(self.cfg, self.epoch)},
            "epoch": self.epoch,
            "config": self.cfg.model_dump(),
            "data_seed": self.cfg.data_seed,
            "early_stopping": {"best_val_loss": self.best_val_loss,
                               "epochs_without_improvement": self.epochs_without_improvement},
            "rng": {"torch": torch.get_rng_state(), "shuffle": self.generator.get_state(),
                    **({"cuda": torch.cuda.get_rng_state(self.device)} if self.on_gpu else {})},
        }

    def load_state_dict(self, state: dict[str, Any], exploit: bool = False) -> None:
        """Continue from ``state``.

        Args:
            state: from :meth:`state_dict` (via :mod:`checkpoint`).
            exploit: the state comes from another trial (PBT) or an earlier config of
                this one: after loading weights and optimizer state, this trial's own
                hyperparameters (lr, momentum, weight decay; batch size is read each
                epoch) replace the donor's.
        """
        from raytune_suite.training import checkpoint as ckpt

        donor_optimizer = ClassifierConfig.model_validate(state["config"]).optimizer_config().name
        same_kind = donor_optimizer == self.cfg.optimizer_config().name
        # A PBT mutation may switch optimizer kind: then only the weights carry over.
        ckpt.load_into(state, self.model, self.optimizer if same_kind else None)
        if self.graphs is not None:  # the loaded optimizer is in its ordinary form
            cuda_graph.make_capturable(self.optimizer)
            self.graphs.reset()
        self.epoch = int(state["epoch"])
        stopping = state.get("early_stopping", {})
        self.best_val_loss = stopping.get("best_val_loss", math.inf)
        self.epochs_without_improvement = stopping.get("epochs_without_improvement", 0)
        torch.set_rng_state(state["rng"]["torch"])
        self._restore_shuffle(state["rng"]["shuffle"])
        if self.on_gpu and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        if exploit:
            self.apply_hyperparameters()

    def _restore_shuffle(self, saved: torch.Tensor) -> None:
        """The shuffling generator's saved state. A checkpoint from another kind of device
        (a GPU trial resumed on a CPU, or back) holds another kind of generator's state:
        then the shuffling goes on from this trial's seed and epoch, and says so."""
        try:
            self.generator.set_state(saved)
        except RuntimeError:
            self.generator.manual_seed(self.cfg.seed * 100_003 + self.epoch)
            warnings.warn(f"checkpoint: the shuffling state is another device's; this "
                          f"{self.generator.device.type} trial reseeds its shuffling from "
                          f"seed {self.cfg.seed} and epoch {self.epoch}", RuntimeWarning,
                          stacklevel=3)

    def apply_hyperparameters(self) -> None:
        """Make the optimizer follow ``self.cfg`` (PBT's new values win over the donor's).

        The loaded optimizer state carries the donor's lr, momentum and weight decay;
        they are replaced here. The lr keeps the schedule's position (with no schedule
        it equals the config's lr); the batch size is read from the config every epoch.
        """
        opt = self.cfg.optimizer_config()
        self._set_lr(self.epoch)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.cfg.weight_decay
            if opt.name == "sgd":
                group["momentum"] = opt.momentum
                group["nesterov"] = opt.nesterov and opt.momentum > 0
        if self.graphs is not None:  # the graphs hold the old values as constants
            self.graphs.reset()
