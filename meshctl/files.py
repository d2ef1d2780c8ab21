"""Durable file writes: the one way every layer (the agent in probes/ too) replaces a file.

Standard library only and no other meshctl import, so any layer may use it (the import-linter
contracts in pyproject.toml allow probes -> meshctl.files and nothing else of meshctl).

`atomic_write` leaves the target either as it was or with the whole new content, whatever
happens (kill, power loss) at any point:

1. the data goes to a new temporary file in the same directory (same file system, so the rename
   is atomic), created with `O_EXCL` and the final mode at creation: a secret is never readable
   by others, not even for a moment;
2. the file is flushed and fsync'd (its data is on disk before its name is);
3. it is renamed over the target (`os.replace`, atomic on POSIX);
4. the directory is fsync'd (the rename itself is on disk).

A kill between 1 and 3 leaves a temporary file (`.<name>.<random>.tmp`) beside the target,
never in its place; `remove_temps` clears them at the next start.

`read_secret_file` is the one way a command takes a secret from a file (never from its command
line, which every local user reads in `ps`): a regular file of this user, closed to others.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

__all__ = ["TEMP_SUFFIX", "SecretFileError", "atomic_write", "fsync_dir", "read_secret_file", "remove_temps", "replace"]

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600) -> None:
    """Replace `path` with `data` (str is written as UTF-8), durably and atomically, with `mode`."""
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly `mode` (the umask may only have narrowed it at creation)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename `src` over `dst` (same directory) and make the rename durable.

    For a file already written with `atomic_write` (e.g. a pending key promoted to the active one).
    """
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and new names in it survive a power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temps(directory: str | os.PathLike[str]) -> int:
    """Remove temporary files `atomic_write` left behind (a kill before the rename); returns how many.

    Only for a directory one process writes (e.g. the agent's state directory at its start):
    another writer's temporary file could be in use.
    """
    gone = 0
    for p in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            p.unlink()
            gone += 1
    return gone


class SecretFileError(ValueError):
    """A secret file that cannot be trusted or read; the message says why, in one line."""


def read_secret_file(path: Path | str, what: str = "token file", max_bytes: int = 4096) -> str:
    """The secret in `path` (stripped), which must be a regular file of this user with no group or other bits.

    Opened first and checked on the open file (no race between the check and the read); a FIFO
    does not hang the caller. `what` names the file in errors ("join token file /run/t is ...").
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SecretFileError(f"{what} {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{what} {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise SecretFileError(f"{what} {path} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})")
        if st.st_mode & 0o077:
            raise SecretFileError(
                f"{what} {path} is open to others (mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}"
            )
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SecretFileError(f"{what} {path} is over {max_bytes} bytes: not a token")
    try:
        secret = data.decode().strip()
    except UnicodeDecodeError:
        raise SecretFileError(f"{what} {path} is not text") from None
    if not secret:
        raise SecretFileError(f"{what} {path} is empty")
    return secret
