"""P8 plan vs actual: what ``raytune-suite plan`` predicts against what ``run`` then trains,
for every recipe in ``experiments/`` this machine can run.

Per recipe, as a user runs them, in one working folder (``digits_distill`` reads the
results of ``digits_teacher`` there, so that one runs first): ``raytune-suite plan FILE
--json --probe`` (epochs low / expected / high, concurrency, and the wall-clock derived from
one probed epoch; it must leave the folder as it was), then ``raytune-suite run FILE
--no-mlflow``, timed from launch to exit. The epochs actually trained are the trials' result
rows (``engine.plan.epochs_trained``).

The CIFAR-10 and ResNet recipes need data this machine cannot download: they run on small
files in the real on-disk formats (``tests/formats.py``, as the recipe tests write them:
300 CIFAR-10 training images, 48 class-folder images, an untrained ResNet-18 state dict)
with ``resources`` set to 1 CPU and no GPU, this machine having none; their search and
scheduler settings are the recipe's own. The plan is made with the same ``--set``s.

Aims (issue): every recipe's epochs within the plan's low..high, and within 35% of its
expected.

    uv run python benchmarks/plan_accuracy.py              # every recipe, once
    uv run python benchmarks/plan_accuracy.py --only quickstart digits_pbt
    uv run python benchmarks/plan_accuracy.py --smoke      # the quickstart, 4 trials x 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (a sibling module: this file runs as a script)

HEADING = "P8 plan vs actual"
COLUMNS = ("date", "machine", "command", "recipe", "setup", "trials, at a time",
           "plan epochs: low / expected / high", "epochs trained", "in low..high",
           "trained vs expected (aim within 35%)", "probe: one epoch (s)",
           "wall-clock (s): plan, actual", "actual / plan wall-clock")
EXPERIMENTS = _common.REPO_ROOT / "experiments"
NO_GPU = ["resources.cpu=1", "resources.gpu=0"]


def _data_sets(root: Path) -> dict[str, list[str]]:
    """The small real-format files, and each data-needing recipe's ``--set``s."""
    sys.path.insert(0, str(_common.REPO_ROOT / "tests"))
    import torch
    import torchvision
    from formats import write_cifar10, write_image_folder

    write_cifar10(root / "cifar", n_train_per_batch=60, n_test=50, seed=0)
    write_image_folder(root / "images", classes=["cats", "dogs"], per_class=24,
                       size_range=(40, 90), seed=0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), root / "resnet18.pth")
    return {"cifar10_asha": [f"config.data_root={root / 'cifar'}", *NO_GPU],
            "cifar10_pbt": [f"config.data_root={root / 'cifar'}", *NO_GPU],
            "resnet_finetune": [f"config.data_root={root / 'images'}",
                                f"config.pretrained_weights={root / 'resnet18.pth'}", *NO_GPU]}


@dataclass
class Row:
    recipe: str
    sets: list[str]
    plan: dict
    trained: int
    wall: float

    @property
    def epochs(self) -> tuple[float, float, float]:
        e = self.plan["epochs"]
        return e["low"], e["expected"], e["high"]

    @property
    def in_range(self) -> bool:
        low, _, high = self.epochs
        return low <= self.trained <= high

    @property
    def off(self) -> float:
        return (self.trained - self.epochs[1]) / self.epochs[1]

    @property
    def planned_wall(self) -> Optional[float]:
        return (self.plan.get("seconds") or {}).get("wall", {}).get("expected")


def _cli(args: list[str], cwd: str) -> tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=str(_common.REPO_ROOT), RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "raytune_suite.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} exited {proc.returncode}:\n{proc.stdout[-1000:]}\n"
                           f"stderr: {proc.stderr[-4000:]}")
    return proc.stdout, time.monotonic() - t0


def _in_order(recipes: list[str]) -> list[str]:
    """Recipes that name another's results (``config.distill_from: digits-teacher``) after
    that one; else alphabetical."""
    import yaml

    raw = {r: yaml.safe_load((EXPERIMENTS / f"{r}.yaml").read_text()) for r in recipes}
    needed = {(c.get("config") or {}).get("distill_from") for c in raw.values()}
    return sorted(recipes, key=lambda r: (raw[r].get("name") not in needed, r))


def _files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


def measure(recipe: str, sets: list[str], cwd: Path) -> Row:
    """Plan (with a probe), then run, one recipe in the shared working folder (a recipe
    may read another's results there, by name)."""
    from raytune_suite.engine.plan import epochs_trained

    file = str(EXPERIMENTS / f"{recipe}.yaml")
    flags = [x for s in sets for x in ("--set", s)]
    before = _files(cwd)
    out, _ = _cli(["plan", file, "--json", "--probe", *flags], str(cwd))
    plan = json.loads(out)
    assert _files(cwd) == before, f"plan wrote into {cwd}"
    _, wall = _cli(["run", file, "--no-mlflow", *flags], str(cwd))
    return Row(recipe, sets, plan, epochs_trained(str(cwd / "ray_results" / plan["name"])),
               wall)


def _f(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", metavar="RECIPE", help="these recipes only")
    p.add_argument("--smoke", action="store_true",
                   help="the quickstart at 4 trials x 3 epochs; prints, records nothing")
    args = p.parse_args(argv)
    _common.start_local_ray_only()
    recipes = _in_order([f.stem for f in EXPERIMENTS.glob("*.yaml")])
    if args.smoke:
        recipes = ["quickstart"]
    elif args.only:
        recipes = [r for r in recipes if r in args.only]
    where = _common.machine("cpu")
    started = time.perf_counter()
    rows, problems = [], []
    with tempfile.TemporaryDirectory(prefix="p8-plan-") as tmp:
        extra = _data_sets(Path(tmp, "data")) if set(recipes) & {
            "cifar10_asha", "cifar10_pbt", "resnet_finetune"} else {}
        work = Path(tmp, "work")
        work.mkdir()
        for recipe in recipes:
            sets = extra.get(recipe, [])
            if args.smoke:
                sets = ["search.num_samples=4", "config.epochs=3", "scheduler.max_t=3",
                        "scheduler.grace_period=1"]
            try:
                row = measure(recipe, sets, work)
            except (RuntimeError, AssertionError, subprocess.TimeoutExpired) as e:
                problems.append(f"{recipe}: {str(e)[-5000:]}")
                continue
            rows.append(row)
            low, expected, high = row.epochs
            print(f"{recipe}: {row.plan['trials']} trials, plan {_f(low)}..{_f(high)} "
                  f"(expected {_f(expected)}), trained {row.trained}: "
                  f"{'in range' if row.in_range else 'OUT OF RANGE'}, {row.off:+.0%} vs "
                  f"expected ({_common.verdict(abs(row.off) <= 0.35)}: within 35%); "
                  f"wall-clock plan {_f(row.planned_wall)} s, actual {row.wall:.1f} s",
                  flush=True)
    met = [r for r in rows if r.in_range and abs(r.off) <= 0.35]
    print(f"{len(met)} of {len(rows)} recipes within low..high and 35% of expected")
    if not _common.report_end(started, problems, args.smoke):
        return 1 if problems else 0
    for r in rows:
        low, expected, high = r.epochs
        probe = r.plan.get("probe") or {}
        ratio = f"{r.wall / r.planned_wall:.2f}x" if r.planned_wall else "-"
        _common.append_row(HEADING, COLUMNS, [
            _common.utc_now(), where, f"`{_common.command()}`", r.recipe,
            ("`--no-mlflow` " + " ".join(f"`--set {s}`" for s in r.sets)).strip()
            .replace(tmp, "$TMP"),
            f"{r.plan['trials']}, {r.plan['concurrency']}",
            f"{_f(low)} / {_f(expected)} / {_f(high)}", str(r.trained),
            "yes" if r.in_range else "NO",
            f"{r.off:+.0%} ({_common.verdict(abs(r.off) <= 0.35)})",
            f"{probe.get('epoch_s', '-')} ({probe.get('device', '-')})",
            f"{_f(r.planned_wall)}, {r.wall:.1f}", ratio])
    print(f"\nrecorded in {_common.BENCHMARKS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
