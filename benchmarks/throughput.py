"""P3 training throughput: the suite's ``Trainer`` against the PyTorch CIFAR-10 tutorial loop.

Both sides train the same CNN (``raytune_suite.training.models.CNN``) from the same seed
on the same CIFAR-format images with the same batch size, SGD (momentum 0.9, lr 0.05) and
number of torch threads, in this one process; after a short warm-up pass of each side,
their timed epochs are interleaved (the order rotated every round), so that other work on
the machine slows every side alike. Figures are samples/s over all timed epochs and of
each side's fastest epoch (the least disturbed):

- tutorial: the CIFAR10 reader the suite's data module uses (torchvision's, without the md5
  check), per-sample PIL transforms (``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip()``, ``RandomAffine(15, translate=(0.1, 0.1))``, ``ToTensor()``,
  ``Normalize``, scaled by the same strength s as the suite), a ``DataLoader`` with W
  worker processes, and ``zero_grad / forward / loss / backward / step`` per batch
  (with the tutorials' ``running_loss += loss.item()``).
- suite: ``Trainer.run_epoch`` on ``load_dataset(DataSpec("cifar10", ...))``: data
  normalised once into tensors on the device, batches indexed from them, batched
  augmentation. Its ``augment`` strength s (default 1.0) crops with round(4 s) pixels of
  padding, flips, rotates by up to 15 s degrees and shifts by up to 0.1 s of the image:
  the same augmentation the tutorial side does per image with PIL.

Only the training pass is timed (the suite's validation pass, and its one-off loading
and normalising of the data, are not; the latter is printed). Without ``--data-root``
the images are synthetic, written in the real CIFAR-10 python format by
``tests/formats.write_cifar10``: throughput depends on the number and size of the
images, not on what they show.

    uv run python benchmarks/throughput.py                  # appends a row to BENCHMARKS.md
    uv run python benchmarks/throughput.py --train-images 50000 --workers 0 2 4
    uv run python benchmarks/throughput.py --data-root ./data    # real CIFAR-10
    uv run python benchmarks/throughput.py --smoke          # seconds; prints only
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (a sibling module: this file runs as a script)

_common.add_repo_root_to_path()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

HEADING = "P3 training throughput"
COLUMNS = ("date", "machine", "command", "setup", "samples/s (train pass)", "suite / tutorial")
LR = 0.05  # both sides
MOMENTUM = 0.9
DROPOUT = 0.5  # the CNN's own default, on both sides
WARMUP_BATCHES = 10


@dataclasses.dataclass
class Timing:
    """Samples trained and seconds spent per timed epoch of one side."""

    label: str
    samples: list[int] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """Samples/s over all timed epochs."""
        return sum(self.samples) / sum(self.seconds)

    @property
    def epoch_rates(self) -> list[float]:
        return [n / s for n, s in zip(self.samples, self.seconds)]

    @property
    def best(self) -> float:
        """The fastest epoch's samples/s: the least disturbed by other work on the machine."""
        return max(self.epoch_rates)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ tutorial side


def tutorial_dataset(root: str, strength: float = 1.0):
    """The torchvision CIFAR10 reader of the data module, with the tutorials' transforms,
    set to the same augmentation as the suite's ``augment`` strength."""
    from torchvision import transforms

    from raytune_suite.training.data import _local_cifar10

    cifar10 = _local_cifar10()
    plain = cifar10(root, train=True)
    # Tutorials hard-code CIFAR-10's channel statistics; these are the same figures
    # computed from the images at hand, so both sides see equally normalised inputs.
    pixels = plain.data.reshape(-1, 3).astype(np.float64) / 255
    mean, std = pixels.mean(0).tolist(), pixels.std(0).tolist()
    augmentation = []
    if strength > 0:
        # The suite's crop, flip, rotation and shift at this strength, done per image.
        augmentation = [transforms.RandomCrop(32, padding=round(4 * strength)),
                        transforms.RandomHorizontalFlip(),
                        transforms.RandomAffine(degrees=15 * strength,
                                                translate=(0.1 * strength,) * 2)]
    transform = transforms.Compose([
        *augmentation,
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    return cifar10(root, train=True, transform=transform)


class TutorialSide:
    """The tutorial loop over a ``DataLoader`` with ``workers`` worker processes."""

    def __init__(self, dataset, workers: int, args: argparse.Namespace, device: torch.device):
        from torch.utils.data import DataLoader

        from raytune_suite.training.models import CNN

        self.device, self.warmup_batches = device, args.warmup_batches
        # As in the tutorials: no pin_memory, no persistent_workers (W workers start anew
        # every epoch, which is part of the epoch's time).
        self.loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                 num_workers=workers)
        torch.manual_seed(0)
        self.model = CNN((3, 32, 32), 10, width=args.width, dropout=DROPOUT).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.timing = Timing(f"tutorial, DataLoader W={workers}")

    def warm_up(self) -> None:
        self._epoch(max_batches=self.warmup_batches)

    def epoch(self) -> tuple[int, float]:
        return self._epoch()

    def _epoch(self, max_batches: Optional[int] = None) -> tuple[int, float]:
        """One pass of the tutorial loop; (samples, seconds)."""
        criterion = nn.CrossEntropyLoss()
        model, optimizer, device = self.model, self.optimizer, self.device
        model.train()
        synchronize(device)
        start = time.perf_counter()
        samples, running_loss = 0, 0.0
        for i, (inputs, labels) in enumerate(self.loader):
            if max_batches is not None and i == max_batches:
                break
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            samples += len(labels)
        synchronize(device)
        return samples, time.perf_counter() - start


# ------------------------------------------------------------------ suite side


class SuiteSide:
    """The suite's ``Trainer`` on the data set as ``load_dataset`` puts it on the device."""

    def __init__(self, root: str, args: argparse.Namespace, device: torch.device,
                 cuda_graphs: bool = True):
        from raytune_suite.training.config import ClassifierConfig
        from raytune_suite.training.data import DataSpec, dataset_cache_clear, load_dataset

        self.cfg = ClassifierConfig(
            dataset="cifar10", data_root=root, model="cnn", width=args.width, dropout=DROPOUT,
            batch_size=args.batch_size, optimizer={"name": "sgd", "momentum": MOMENTUM}, lr=LR,
            augment=args.suite_augment, epochs=args.epochs, cuda_graphs=cuda_graphs)
        self.device, self.warmup_batches = device, args.warmup_batches
        dataset_cache_clear()
        synchronize(device)
        start = time.perf_counter()
        self.data = load_dataset(DataSpec("cifar10", root=root), device)
        synchronize(device)
        self.load_seconds = time.perf_counter() - start  # once per process, not per epoch
        self.trainer = None
        self.timing = Timing(f"suite Trainer, augment={args.suite_augment:g}"
                             + ("" if cuda_graphs or device.type != "cuda" else ", no graphs"))

    def warm_up(self) -> None:
        from raytune_suite.training.loop import Trainer

        n = self.warmup_batches * self.cfg.batch_size
        head = dataclasses.replace(self.data, x_train=self.data.x_train[:n],
                                   y_train=self.data.y_train[:n])
        torch.manual_seed(0)
        Trainer(self.cfg, head, self.device).train_epoch()
        torch.manual_seed(0)
        self.trainer = Trainer(self.cfg, self.data, self.device)  # the timed one starts fresh

    def epoch(self) -> tuple[int, float]:
        metrics = self.trainer.run_epoch()  # its epoch_seconds cover the training pass only
        return len(self.data.y_train), metrics["epoch_seconds"]


def time_sides(sides: list, epochs: int) -> None:
    """Warm every side up, then time their epochs in turn.

    Interleaved, with the order rotated every round, so that other work on the machine
    slows every side alike instead of whichever ran while it lasted.
    """
    for side in sides:
        side.warm_up()
    for round_ in range(epochs):
        k = round_ % len(sides)
        for side in sides[k:] + sides[:k]:
            samples, seconds = side.epoch()
            side.timing.samples.append(samples)
            side.timing.seconds.append(seconds)
            print(f"  epoch {round_ + 1}, {side.timing.label}: {samples / seconds:,.0f} "
                  "samples/s", flush=True)


# ------------------------------------------------------------------ driver


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-images", type=int, default=10_000,
                   help="synthetic training images (5 batch files); 50000 = CIFAR-10's size")
    p.add_argument("--data-root", help="a folder holding cifar-10-batches-py/ (real CIFAR-10) "
                                       "instead of synthetic images")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per side")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, default=0.5, help="CNN width multiplier on 64-128-512")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads, both sides")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                   help="DataLoader num_workers values of the tutorial side")
    p.add_argument("--suite-augment", type=float, default=1.0,
                   help="the suite's augment strength (1.0: crop 4 + flip + rotate + shift)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--warmup-batches", type=int, default=WARMUP_BATCHES)
    p.add_argument("--smoke", action="store_true",
                   help="500 images, 1 epoch, W=0 only; prints, records nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_images, args.epochs, args.workers, args.warmup_batches = 500, 1, [0], 2
    for name in ("train_images", "epochs", "batch_size", "threads", "warmup_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.train_images < 5:
        p.error(f"--train-images must be >= 5 (one per batch file), got {args.train_images}")
    if min(args.workers) < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.suite_augment <= 1:
        p.error(f"--suite-augment must satisfy 0 <= s <= 1, got {args.suite_augment}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.data_root and not (Path(args.data_root) / "cifar-10-batches-py").is_dir():
        p.error(f"--data-root must hold cifar-10-batches-py/, got {args.data_root}")
    return args


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def run(args: argparse.Namespace, root: str, images: str) -> None:
    device = resolve_device(args.device)
    where = _common.machine(device_name(device))  # before the run: its load figure
    torch.set_num_threads(args.threads)
    print(f"device {device_name(device)}, torch {torch.__version__}, {args.threads} torch "
          f"thread(s), {os.cpu_count()} CPUs; {images}; batch {args.batch_size}, CNN width "
          f"{args.width:g}, {args.epochs} timed epoch(s) per side", flush=True)

    dataset = tutorial_dataset(root, args.suite_augment)
    tutorials = {w: TutorialSide(dataset, w, args, device) for w in args.workers}
    suite = SuiteSide(root, args, device)
    print(f"  suite: {suite.load_seconds:.1f} s once to load and normalise the data", flush=True)
    # On a GPU, also the suite's step without CUDA graphs (training/cuda_graph.py): what
    # the graphs add. On a CPU there are none.
    eager = [SuiteSide(root, args, device, cuda_graphs=False)] if device.type == "cuda" else []
    time_sides([*tutorials.values(), suite, *eager], args.epochs)

    print(f"\n{'side':<34}{'samples/s':>11}{'best epoch':>12}  per epoch")
    for timing in [*(t.timing for t in tutorials.values()), suite.timing,
                   *(e.timing for e in eager)]:
        per_epoch = ", ".join(f"{r:,.0f}" for r in timing.epoch_rates)
        print(f"{timing.label:<34}{timing.rate:>11,.0f}{timing.best:>12,.0f}  {per_epoch}")
    ratios = {w: (suite.timing.rate / t.timing.rate, suite.timing.best / t.timing.best)
              for w, t in tutorials.items()}
    for workers, (ratio, best) in ratios.items():
        print(f"suite / tutorial W={workers}: {ratio:.2f}x (best epochs: {best:.2f}x)")
    if eager:
        print(f"CUDA graphs / eager steps: {suite.timing.rate / eager[0].timing.rate:.2f}x")

    if args.smoke:
        return
    setup = (f"{images}; {args.epochs} epoch(s)/side, interleaved; CNN width {args.width:g}, "
             f"batch {args.batch_size}, SGD lr {LR}; {args.threads} torch thread(s); suite "
             f"augment {args.suite_augment:g}; suite data load once {suite.load_seconds:.1f} s")
    figures = "; ".join(
        f"{t.label.replace('DataLoader ', '')} {t.rate:,.0f} (epochs "
        + "/".join(f"{r:,.0f}" for r in t.epoch_rates) + ")"
        for t in [*(side.timing for side in tutorials.values()), suite.timing,
                  *(e.timing for e in eager)])
    ratio_text = "; ".join(f"W={w}: {r:.2f}x (best epochs {b:.2f}x)"
                           for w, (r, b) in ratios.items())
    _common.append_row(HEADING, COLUMNS, [
        _common.utc_now(), where, f"`{_common.command()}`",
        setup, figures, ratio_text])
    print(f"\nrecorded in {_common.BENCHMARKS_MD}")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.data_root:
        run(args, args.data_root, f"CIFAR-10 from {args.data_root}")
    else:
        from tests.formats import write_cifar10

        per_batch = math.ceil(args.train_images / 5)
        with tempfile.TemporaryDirectory(prefix="throughput-cifar-") as root:
            write_cifar10(root, n_train_per_batch=per_batch, n_test=min(per_batch, 1000))
            run(args, root, f"{5 * per_batch} synthetic CIFAR-format train images")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
