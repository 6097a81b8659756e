"""The data dir is its user's alone: directories 0700, files 0600. It holds the fleet secrets, the NATS
passwords, the stored telemetry and logs that name devices; nobody else on the machine may read any of it."""

import os
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077  # what the platform's processes create with: the modes above


def make_private(data_dir: Path) -> None:
    """Create the data dir, or tighten one an earlier version left readable by others, with all it holds."""
    make_dirs(data_dir)
    _tighten(data_dir, DIR_MODE)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            _tighten(Path(root, name), DIR_MODE)
        for name in files:
            _tighten(Path(root, name), FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    """Symbolic links are left alone: chmod would change what they point to, which may be outside the data dir."""
    status = path.lstat()
    if not path.is_symlink() and status.st_mode & 0o777 != mode:
        path.chmod(mode)


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its user can read, whatever mode the file had."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, FILE_MODE)
        handle.write(text)


def make_dirs(folder: Path) -> None:
    """`mkdir -p` whose every new directory is private (Path.mkdir gives only the last one the mode)."""
    for directory in (*reversed(folder.parents), folder):
        if not directory.is_dir():
            directory.mkdir(exist_ok=True, mode=DIR_MODE)


def create_private(path: Path, data: bytes) -> None:
    """Create a file only its user can read (FileExistsError if it exists: a secret is never overwritten)."""
    make_dirs(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def open_private_log(path: Path) -> BinaryIO:
    """A log to append to, only its user can read."""
    make_dirs(path.parent)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE), "ab")
