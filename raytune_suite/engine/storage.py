"""Small file operations on Ray's storage (a local folder, NFS, or a pyarrow URI such as
s3://): copy a checkpoint folder, append a line, remove a folder."""

from __future__ import annotations

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
