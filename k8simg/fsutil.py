"""Atomic file writes: nothing is ever half-written, keys are never world-readable."""

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The temporary file is created with ``mode`` before any byte is written, so a secret is
    never readable by others, not even for a moment.

    :param path: destination; its parent directories are created (0700 for new ones).
    :param data: the content; ``str`` is encoded as UTF-8.
    :param mode: the file's permission bits.
    """
    atomic_write_all({Path(path): (data, mode)})


def atomic_write_all(files: dict[Path, tuple[bytes | str, int]]) -> None:
    """Write every file, or none: each is written in full beside its destination first, and
    only when all of them are there are they moved into place (a rename each). A failure
    before that leaves every destination as it was and no temporary file behind.

    :param files: destination -> ``(data, mode)``.
    :raises OSError: naming the file that could not be written.
    """
    staged: list[tuple[str, Path]] = []
    try:
        for path, (data, mode) in files.items():
            path = Path(path)
            if path.is_dir():
                raise IsADirectoryError(21, "Is a directory", str(path))
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if isinstance(data, str):
                data = data.encode()
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((tmp, path))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    for parent in {path.parent for _, path in staged}:
        dirfd = os.open(parent, os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


@contextlib.contextmanager
def atomic_stream(path: Path, mode: int = 0o600) -> Iterator:
    """A binary file to write ``path`` through, in pieces: created beside it with ``mode``
    before any byte is written, synced and moved into place only when the ``with`` block
    ends without an error; otherwise removed, ``path`` left as it was."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
