"""Atomic output files: a reader never sees half a file, and nothing is clobbered by accident."""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import tempfile
from pathlib import Path

from codec.errors import InvalidRequestError


class StandardStream:
    """Standard input or output: what `-` names on the command line (a file named - is ./- there).

    Only the CLI makes these (STDIN, STDOUT); a path string "-" given to the
    library is a file of that name.
    """

    def __init__(self, role: str):
        self.role = role

    def __str__(self) -> str:
        return "-"

    def __repr__(self) -> str:
        return f"<{self.role}>"


STDIN = StandardStream("standard input")
STDOUT = StandardStream("standard output")


def is_stdio(path: object) -> bool:
    return isinstance(path, StandardStream)


def display_name(path: str | os.PathLike | StandardStream) -> str:
    """How messages name an input or output (a file named - as ./-, so that it does not read as a stream)."""
    if isinstance(path, StandardStream):
        return path.role
    return "./-" if os.fspath(path) == "-" else os.fspath(path)


def read_input(path: str | os.PathLike | StandardStream) -> bytes:
    """The bytes of an input file or of STDIN; a device (/dev/zero, a disk, a terminal) is refused rather than
    read without end."""
    if path is STDIN:
        return _read_stdin()
    mode = os.stat(path).st_mode  # a missing file raises the usual OSError, with its name
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise InvalidRequestError(f"{os.fspath(path)}: is a device, not a file")
    with open(path, "rb") as f:  # regular files, and pipes (`vqz decode /dev/stdin`)
        return f.read()


def _read_stdin() -> bytes:
    if sys.stdin is None:
        raise InvalidRequestError("standard input: closed")
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):  # closed, or a stream without a descriptor (tests)
        mode = None
    if mode is not None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        raise InvalidRequestError("standard input: a terminal or a device (pipe or redirect a file into it: - < FILE)")
    return sys.stdin.buffer.read()


def check_stdout() -> None:
    """Refuse STDOUT as an output when it is a terminal (binary data would fill it); checked before any work."""
    if sys.stdout.isatty():
        raise InvalidRequestError("-o -: standard output is a terminal (redirect it to a file or a pipe)")


def write_output(path: str | os.PathLike | StandardStream, data: bytes, force: bool = False) -> None:
    """`atomic_write`, or `data` to STDOUT (which the caller has checked with `check_stdout`)."""
    if path is not STDOUT:
        atomic_write(path, data, force)
        return
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes, force: bool = False) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    Refuses to replace an existing file unless `force` is set.
    """
    target = Path(path)
    if target.exists() and not force:
        raise InvalidRequestError(f"{target} exists (give -o another name, or --force to replace it)")
    if target.is_dir():
        raise InvalidRequestError(f"{target} is a directory")
    folder = target.parent
    if not folder.is_dir():  # else the error would name mkstemp's temporary file
        raise InvalidRequestError(f"{folder}: no such folder (for {target.name})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:  # name the file the user asked for, not mkstemp's temporary one
        raise OSError(exc.errno, exc.strerror, os.fspath(target)) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _link_new(tmp: str, target: Path) -> None:
    """Give the finished file its name only if that name is still free (no clobbering in a race).

    A hard link fails if the name exists, atomically; where a file system
    has no hard links, the earlier check stands and the file is renamed
    (a file made in between would then be replaced).
    """
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise InvalidRequestError(f"{target} exists (give -o another name, or --force to replace it)") from None
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        os.replace(tmp, target)
        return
    os.unlink(tmp)


#: what os.link says on a file system without hard links (FAT, exFAT, some network and FUSE ones)
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
