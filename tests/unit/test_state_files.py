"""The experiment folder's files survive a kill at any moment and a resumed search.

- The suite's own files are never named ``*.json`` / ``*.pkl``: on restore Ray copies
  every such file into its staging folder and uploads the stale copies back at each
  snapshot. Folders made before the rename are read and moved to the new names.
- Ray's snapshot uploads to a local folder replace each file by a rename, so a reader
  (or a kill) never meets a file cut short.
"""

import json
import os

from ray.train._internal.storage import _FilesystemSyncer

from raytune_suite.engine import state, storage


def test_no_state_file_is_one_ray_copies_on_restore(tmp_path):
    state.write_state(tmp_path, {"tracking_uri": "sqlite:///x.db", "parent_run_id": "abc"})
    state.record_outcomes(tmp_path, {"t1": "completed", "t2": "errored"})
    state.record_outcomes(tmp_path, {"t3": "stopped_early"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["outcomes.jsonl", "raytune_suite.state"]
    # ray/tune/execution/experiment_state.py sync_down_experiment_state takes these:
    assert not [n for n in names if n.endswith(".json") or n.endswith(".pkl")]
    assert state.read_state(tmp_path)["parent_run_id"] == "abc"
    assert state.read_outcomes(tmp_path) == {"t1": "completed", "t2": "errored",
                                              "t3": "stopped_early"}
    lines = (tmp_path / "outcomes.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines][0] == {"trial_id": "t1", "outcome": "completed"}


def test_folders_made_before_the_rename_are_read_then_moved(tmp_path):
    (tmp_path / "raytune_suite.json").write_text(json.dumps({"parent_run_id": "old"}))
    (tmp_path / "outcomes.json").write_text(json.dumps({"t1": "completed"}))
    assert state.read_state(tmp_path) == {"parent_run_id": "old"}
    assert state.read_outcomes(tmp_path) == {"t1": "completed"}
    state.update_state(tmp_path, mlflow_offline="down")
    state.record_outcomes(tmp_path, {"t2": "diverged"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outcomes.jsonl",
                                                          "raytune_suite.state"]
    assert state.read_state(tmp_path) == {"parent_run_id": "old", "mlflow_offline": "down"}
    assert state.read_outcomes(tmp_path) == {"t1": "completed", "t2": "diverged"}



def test_resume_adopts_the_old_names_and_writes_nothing_else(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "raytune_suite.json").write_text(json.dumps({"parent_run_id": "old"}))
    (old / "outcomes.json").write_text(json.dumps({"t1": "completed"}))
    state.adopt_old_names(old)
    state.adopt_old_names(new)
    assert sorted(p.name for p in old.iterdir()) == ["outcomes.jsonl", "raytune_suite.state"]
    assert state.read_state(old) == {"parent_run_id": "old"}
    assert state.read_outcomes(old) == {"t1": "completed"}
    assert list(new.iterdir()) == []

def _staging(tmp_path, text: str):
    staging = tmp_path / "staging"
    (staging / "trial_0").mkdir(parents=True, exist_ok=True)
    (staging / "experiment_state-x.json").write_text(text)
    (staging / "tuner.pkl").write_bytes(text.encode() * 100)
    (staging / "trial_0" / "progress.csv").write_text(text)
    return staging


def test_snapshot_uploads_to_a_local_folder_replace_files_by_rename(tmp_path):
    import pyarrow.fs

    dest = tmp_path / "experiment"
    syncer = _FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem(),
                               sync_period=0, sync_timeout=60)
    with storage.atomic_snapshot_uploads():
        syncer.sync_up(str(_staging(tmp_path, "first")), str(dest))
        syncer.wait()
        # A reader of the first upload (Tuner.restore, CheckpointRotation) ...
        held = open(dest / "tuner.pkl", "rb")
        inode = os.stat(dest / "tuner.pkl").st_ino
        syncer.sync_up(str(_staging(tmp_path, "second")), str(dest), exclude=None)
        syncer.wait()
    # ... still reads the whole old file: the new one came in by a rename, not by
    # truncating the old one (which a kill mid-upload would leave empty).
    assert held.read() == b"first" * 100
    held.close()
    assert os.stat(dest / "tuner.pkl").st_ino != inode
    assert (dest / "tuner.pkl").read_bytes() == b"second" * 100
    assert (dest / "experiment_state-x.json").read_text() == "second"
    assert (dest / "trial_0" / "progress.csv").read_text() == "second"
    assert not list(dest.rglob("*.partial"))
    # Outside the context Ray's own upload is back.
    assert _FilesystemSyncer._sync_up_command.__qualname__.startswith("_FilesystemSyncer")


def test_snapshot_uploads_copy_only_what_changed(tmp_path):
    """A large search's staging folder holds a TensorBoard file per trial; an upload
    copies the files that changed since the last one, and every file that did."""
    import pyarrow.fs

    dest = tmp_path / "experiment"
    staging = _staging(tmp_path, "first")
    syncer = _FilesystemSyncer(storage_filesystem=pyarrow.fs.LocalFileSystem(),
                               sync_period=0, sync_timeout=60)
    with storage.atomic_snapshot_uploads():
        syncer.sync_up(str(staging), str(dest))
        syncer.wait()
        kept = os.stat(dest / "trial_0" / "progress.csv").st_ino
        replaced = os.stat(dest / "tuner.pkl").st_ino
        with open(staging / "tuner.pkl", "ab") as f:  # appended to, as an event file is
            f.write(b"more")
        syncer.sync_up(str(staging), str(dest))
        syncer.wait()
    assert os.stat(dest / "trial_0" / "progress.csv").st_ino == kept  # unchanged: left
    assert os.stat(dest / "tuner.pkl").st_ino != replaced
    assert (dest / "tuner.pkl").read_bytes() == b"first" * 100 + b"more"
    assert (dest / "experiment_state-x.json").read_text() == "first"
