"""BENCHMARKS.md rows under changed columns, and P2's hand grid against the file it is
compared with (benchmarks/_common.py, benchmarks/time_to_accuracy.py; nothing runs)."""

import sys

import pytest
import yaml

from helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import _common  # noqa: E402
import time_to_accuracy  # noqa: E402

OLD = """\
# Benchmarks

## P2 time to accuracy

What the rows measure.

| date | ratio |
|---|---|
| 2026-01-01 | 1.2x |

## P3 training throughput

| date | samples/s |
|---|---|
| 2026-01-02 | 100 |
"""


def test_new_columns_start_a_new_table_after_the_old_one(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(OLD)
    columns = ("date", "time to target (s)", "ratio")
    _common.append_row_to_table("P2 time to accuracy", columns, ["2026-02-01", "3.0", "4x"],
                                "From issue 14 on: four sides.", path)
    _common.append_row_to_table("P2 time to accuracy", columns, ["2026-02-02", "2.5", "5x"],
                                "From issue 14 on: four sides.", path)
    text = path.read_text()
    assert text.startswith(OLD.split("## P3")[0].rstrip("\n") + "\n\nFrom issue 14 on: "
                                                                 "four sides.\n\n")
    p2 = text.split("## P3")[0]
    assert p2.count("From issue 14 on") == 1  # the second row joined the new table
    assert p2.endswith("| date | time to target (s) | ratio |\n|---|---|---|\n"
                       "| 2026-02-01 | 3.0 | 4x |\n| 2026-02-02 | 2.5 | 5x |\n\n")
    assert "| 2026-01-01 | 1.2x |\n\nFrom issue 14" in p2  # the old table as it was
    assert text.endswith("## P3 training throughput\n\n| date | samples/s |\n|---|---|\n"
                         "| 2026-01-02 | 100 |\n")


def test_a_new_section_gets_the_note_and_the_table(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n")
    _common.append_row_to_table("P9 new", ("a", "b"), ["1", "x|y"], "Note.", path)
    assert path.read_text() == ("# Benchmarks\n\n## P9 new\n\nNote.\n\n| a | b |\n|---|---|\n"
                                "| 1 | x\\|y |\n")
    with pytest.raises(ValueError, match="cells must match columns"):
        _common.append_row_to_table("P9 new", ("a", "b"), ["1"], "Note.", path)


def test_the_hand_grid_spans_the_files_box():
    """The grid and the suite search the same box: the grid's values are the ends (and
    the middle) of each range of the experiment file, and exactly its choices."""
    space = yaml.safe_load(time_to_accuracy.FILE.read_text())["search_space"]
    grid = time_to_accuracy.GRID_VALUES
    assert list(grid) == list(space)
    for key, entry in space.items():
        (kind, values), = entry.items()
        if kind == "choice":
            assert grid[key] == values, key
        else:
            assert kind in ("loguniform", "uniform"), key
            assert (min(grid[key]), max(grid[key])) == tuple(values), key
            assert len(grid[key]) == 3, key


def test_the_easy_case_searches_lr_and_batch_size_over_the_grids_box():
    file = time_to_accuracy.easy_file(yaml.safe_load(time_to_accuracy.FILE.read_text()))
    grid = time_to_accuracy.EASY_GRID
    assert list(file["search_space"]) == list(grid) == ["lr", "batch_size"]
    assert tuple(file["search_space"]["lr"]["loguniform"]) == (min(grid["lr"]), max(grid["lr"]))
    assert file["search_space"]["batch_size"]["choice"] == grid["batch_size"]
    assert file["config"]["optimizer"] == "sgd" and file["scheduler"]["max_t"] == 30
    args = time_to_accuracy.parse_args(["--case", "easy", "--smoke"])
    assert args.target == 0.97 and args.grid == {"lr": [1e-3, 1e-2], "batch_size": [32]}
