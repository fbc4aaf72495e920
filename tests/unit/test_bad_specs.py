"""The catalogue of malformed experiment files in tests/data/bad_specs/.

Each file's first line says which field its error must name (``# expect: FIELD``).
`raytune-suite run FILE` must exit 2 with one ``error: FIELD: ...`` line, print no
traceback, start neither Ray nor MLflow and create nothing on disk.
"""

import subprocess
from pathlib import Path

import pytest

from helpers import CLI, ROOT, cli_env
from raytune_suite.cli import main

BAD_SPECS = sorted((ROOT / "tests" / "data" / "bad_specs").glob("*.yaml"))


def _expected_field(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: FIELD'"
    return first[len("# expect: "):].strip()


@pytest.fixture(scope="module", autouse=True)
def no_ray_runtime():
    """Start from no Ray runtime (an earlier test in this process may have left one), so
    the tests can check that a bad file never starts one."""
    import ray

    ray.shutdown()


def test_the_catalogue_is_large_enough():
    assert len(BAD_SPECS) >= 30


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_exits_2_naming_the_field_and_creates_nothing(path, in_tmp, capsys):
    import ray

    assert main(["run", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), err
    assert any(line.startswith("error: ") and _expected_field(path) in line.split(": ")[1]
               for line in lines), err
    assert "Traceback" not in out + err
    assert not ray.is_initialized()
    assert list(in_tmp.iterdir()) == []  # no ray_results, no mlflow.db, nothing


@pytest.mark.parametrize("name", ["yaml_syntax", "missing_data_root", "bad_import_path"])
def test_bad_spec_from_the_command_line(name, tmp_path):
    """The same through the real entry point: exit status 2 and no traceback."""
    path = ROOT / "tests" / "data" / "bad_specs" / f"{name}.yaml"
    proc = subprocess.run([*CLI, "run", str(path)], cwd=tmp_path, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert _expected_field(path) in proc.stderr.splitlines()[0]
    assert list(tmp_path.iterdir()) == []
