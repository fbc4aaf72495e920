"""What both benchmarks share: the machine's description, the command, and BENCHMARKS.md rows.

Rows are appended to the end of their section's table, so BENCHMARKS.md reads as a log:
one line per real run, never rewritten. The file is replaced atomically, so an
interrupted run leaves either the old file or the new one.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"

INTRO = """\
# Benchmarks

Measured figures behind two claims of the suite. Each section is a log: the scripts in
`benchmarks/` append one row per real run (date, machine, exact command, figures) and
never rewrite older rows; `--smoke` runs only print.

- **P3 training throughput** — samples/s of one training epoch of the same CNN, data,
  batch size, augmentation and optimizer, written two ways: the loop of the PyTorch
  CIFAR-10 tutorials (torchvision dataset, per-sample PIL transforms, `DataLoader` with
  W workers) and the suite's `Trainer` (data normalised once into tensors, batches
  indexed from them, batched augmentation on the same device; channels_last + bf16 on a
  GPU). Reproduce with `uv run python benchmarks/throughput.py`.
- **Data held once per node** — two trials of the built-in `classifier` trainable running
  at the same time on one node, through the real runner (`run_experiment`), read the data
  set from Ray's object store instead of each holding a copy. The script samples every
  trial process's RSS, USS (memory only that process holds) and PSS (shared pages split
  among the processes mapping them), and the node total (sum of PSS over the driver and
  all of Ray's processes), in four cases: one trial on a tiny data set (the runtime a
  trial costs without data), one and two trials sharing a large data set, and a control
  in which two trials each load their own copy (showing what a copy looks like). All
  figures in MB (10^6 bytes); "(+n)" is a trial's USS above the runtime alone.
  Reproduce with `uv run python benchmarks/data_sharing.py`.
"""


def add_repo_root_to_path() -> None:
    """Let a script run as ``python benchmarks/x.py`` import ``raytune_suite`` and ``tests``."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def cpu_name() -> str:
    """``platform.processor()``, which is often empty on Linux; then /proc/cpuinfo's name."""
    name = platform.processor()
    if name and name not in ("x86_64", "aarch64", "arm64", "i386"):
        return name
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()


def machine(device_name: str) -> str:
    """e.g. ``AMD EPYC, 2 CPUs, 23 GiB, cpu (load 1.6)``: what the figures depend on."""
    parts = [cpu_name(), f"{os.cpu_count()} CPUs"]
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        parts.append(f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB")
    parts.append(device_name)
    if hasattr(os, "getloadavg"):
        # Other work on the machine skews the figures; the 1-minute load before the run says
        # how much there was.
        parts.append(f"load {os.getloadavg()[0]:.1f} at start")
    return ", ".join(parts)


def command() -> str:
    """The command as run, with the script's path relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO_ROOT)
    except ValueError:
        pass
    return shlex.join(["uv", "run", "python", str(script), *sys.argv[1:]])


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def append_row(heading: str, columns: Sequence[str], cells: Sequence[str],
               path: Path = BENCHMARKS_MD) -> None:
    """Append one table row to section ``## heading`` of ``path``.

    The file (with :data:`INTRO`), the section and its table header are created when
    missing. The row goes after the section's last table line.
    """
    if len(columns) != len(cells):
        raise ValueError(f"cells must match columns ({len(columns)}), got {len(cells)} cells")
    text = path.read_text() if path.exists() else INTRO
    lines = text.rstrip("\n").split("\n")
    title = f"## {heading}"
    row = "| " + " | ".join(_cell(c) for c in cells) + " |"
    if title not in lines:
        lines += ["", title, ""]
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    table = [i for i in range(start + 1, end) if lines[i].startswith("|")]
    if table:
        lines.insert(table[-1] + 1, row)
    else:
        header = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), row]
        at = end
        while at > start + 1 and not lines[at - 1].strip():
            at -= 1  # after the section's text, before the blank lines that close it
        lines[at:at] = ([""] if lines[at - 1].strip() else []) + header
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
