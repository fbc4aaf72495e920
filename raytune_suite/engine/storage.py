"""Small file operations on Ray's storage (a local folder, NFS, or a pyarrow URI such as
s3://): copy a checkpoint folder, append a line, remove a folder; and Ray's snapshot
uploads made atomic on a local folder (:func:`atomic_snapshot_uploads`)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pyarrow.fs


def is_local(fs) -> bool:
    return isinstance(fs, pyarrow.fs.LocalFileSystem)


def copy_folder(fs, source: str, dest: str) -> None:
    """Copy a checkpoint folder within one filesystem. Locally, files are hard-linked
    (checkpoint files are written once, so a link is a copy that costs no space until
    the original is deleted); elsewhere they are copied."""
    remove_folder(fs, dest)
    if is_local(fs):
        shutil.copytree(source, dest, copy_function=_link_or_copy)
        return
    pyarrow.fs.copy_files(source, dest, source_filesystem=fs, destination_filesystem=fs)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another device, or no hard links on this filesystem
        shutil.copy2(src, dst)


def remove_folder(fs, path: str) -> None:
    """Remove a folder if it exists."""
    if is_local(fs):
        shutil.rmtree(path, ignore_errors=True)
        return
    info = fs.get_file_info(path)
    if info.type == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)


def exists(fs, path: str) -> bool:
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def append_line(fs, path: str, line: str) -> None:
    """Append one line to a text file on storage, durably (S3 cannot append: there the
    file is rewritten, which is fine for the few lines written here)."""
    data = (line.rstrip("\n") + "\n").encode()
    if is_local(fs):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
        return
    old = b""
    if exists(fs, path):
        with fs.open_input_stream(path) as f:
            old = f.readall()
    with fs.open_output_stream(path) as f:
        f.write(old + data)


def read_text(fs, path: str) -> str:
    if not exists(fs, path):
        return ""
    with fs.open_input_stream(path) as f:
        return f.readall().decode()


def list_folders(fs, path: str) -> list[str]:
    """Names of the folders directly inside ``path``."""
    if not exists(fs, path):
        return []
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path))
    return [Path(i.path).name for i in infos if i.type == pyarrow.fs.FileType.Directory]


@contextlib.contextmanager
def atomic_snapshot_uploads():
    """While ``Tuner.fit`` runs, Ray's uploads of its driver staging folder (experiment
    state, searcher state, ``tuner.pkl``) to a local storage folder write each file
    beside its target and rename it over the target, instead of rewriting the target in
    place.

    Ray uploads that folder at every snapshot, in a background thread, with pyarrow's
    ``copy_files``, which truncates each target and then writes it: a driver killed
    mid-upload leaves empty or cut files (``tuner.pkl`` of 0 bytes, a searcher state
    of 0 bytes), and ``Tuner.restore`` then fails on them. With a rename a kill leaves
    the old file or the new one. Remote storage (s3://, gs://) writes whole objects
    and is left as it is."""
    from ray.train._internal.storage import _FilesystemSyncer

    original = _FilesystemSyncer._sync_up_command

    def sync_up_command(self, local_path, uri, exclude=None):
        if is_local(self.storage_filesystem) and not exclude and os.path.isdir(local_path):
            return _upload_atomically, dict(local_path=local_path, fs_path=uri)
        return original(self, local_path, uri, exclude)

    _FilesystemSyncer._sync_up_command = sync_up_command
    try:
        yield
    finally:
        _FilesystemSyncer._sync_up_command = original


def _upload_atomically(local_path: str, fs_path: str) -> None:
    """Copy what changed since the last upload. A copy carries its source's mtime as it
    was before the copy, so a file changed during or after it is copied again next time;
    unchanged files (most trials' TensorBoard files in a large search) are left alone."""
    for root, _, files in os.walk(local_path):
        target = os.path.join(fs_path, os.path.relpath(root, local_path))
        os.makedirs(target, exist_ok=True)
        for name in files:
            source, dest = os.path.join(root, name), os.path.join(target, name)
            try:
                before = os.stat(source)
            except FileNotFoundError:  # Ray replaced it meanwhile: the next upload has it
                continue
            try:
                held = os.stat(dest)
                if (held.st_size, held.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
                    continue
            except FileNotFoundError:
                pass
            partial = os.path.join(target, f".{name}.partial")
            shutil.copyfile(source, partial)
            os.utime(partial, ns=(before.st_atime_ns, before.st_mtime_ns))
            os.replace(partial, dest)
