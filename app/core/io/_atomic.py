"""Atomic, non-clobbering file writes: write a temporary file beside the target, then rename.

A failed write leaves no partial output; an existing file is replaced only with
``overwrite=True``; a file that a reader produced the source image from is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from app.core.errors import WriteError

__all__ = [
    "append_durable",
    "atomic_output",
    "check_output_path",
    "describe_os_error",
    "full_suffix",
    "write_bytes_atomic",
]


def full_suffix(path: str | os.PathLike[str]) -> str:
    """Lower-case extension, with ``.nii.gz`` kept whole (``"scan.nii.gz"`` → ``".nii.gz"``)."""
    name = Path(path).name.lower()
    for double in (".nii.gz", ".nrrd.gz"):
        if name.endswith(double):
            return double
    return Path(name).suffix


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    protected: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Validate an output path before anything is computed or written.

    Raises
    ------
    WriteError
        The folder is missing or not writable, the path is a folder, the file exists and
        ``overwrite`` is False, or the path is one of the ``protected`` source files.
    """
    out = Path(path).expanduser()
    resolved = out.resolve()
    for src in protected:
        if src and _same_file(src, resolved):
            raise WriteError(f"{out}: refusing to overwrite the source image {src}")
    parent = resolved.parent
    if not parent.is_dir():
        raise WriteError(f"{out}: the output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WriteError(f"{out}: the output folder {parent} is not writable")
    if resolved.is_dir():
        raise WriteError(f"{out}: is a folder, expected a file name")
    if resolved.exists() and not overwrite:
        raise WriteError(f"{out}: already exists (overwrite=True or --overwrite replaces it)")
    return out


def _same_file(src: str | os.PathLike[str], resolved: Path) -> bool:
    try:
        return Path(src).expanduser().resolve() == resolved
    except (OSError, RuntimeError):
        return False


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    protected: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it to ``path`` atomically.

    The temporary name keeps the full extension (``.nii.gz``) because some writers choose the
    format from it. On any exception the temporary file is removed and nothing appears at
    ``path``. Without ``overwrite`` the final step is a hard link (fails if the target appeared
    meanwhile), so a concurrent writer is not clobbered either.
    """
    out = check_output_path(path, overwrite=overwrite, protected=protected)
    suffix = full_suffix(out)
    stem = out.name[: len(out.name) - len(suffix)] if suffix else out.name
    tmp = out.parent / f".{stem}.{secrets.token_hex(4)}.tmp{suffix}"
    try:
        yield tmp
        if not tmp.is_file():
            raise WriteError(f"{out}: the writer produced no file")
        if overwrite:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)
            except FileExistsError:
                raise WriteError(
                    f"{out}: already exists (overwrite=True or --overwrite replaces it)"
                ) from None
            except OSError:
                # file systems without hard links: check-then-rename is the best we can do
                if out.exists():
                    raise WriteError(
                        f"{out}: already exists (overwrite=True or --overwrite replaces it)"
                    ) from None
                os.replace(tmp, out)
    except OSError as exc:
        if isinstance(exc, WriteError):
            if str(tmp) in str(exc):  # a writer named the file it was given: name the target
                raise WriteError(str(exc).replace(str(tmp), str(out))) from exc
            raise
        # the OS names the temporary file; the user only knows the target
        raise WriteError(describe_os_error(out, exc)) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


# --- checked byte-level writes (the benchmark's results, masks and manifest) ----------------

#: the one place bytes reach the disk in :func:`write_bytes_atomic` and :func:`append_durable`
#: (a test replaces it to simulate a full disk part-way through a write)
_os_write = os.write


def describe_os_error(target: str | os.PathLike[str], exc: OSError) -> str:
    """One line naming ``target`` (never a temporary name) and what the OS said."""
    import errno

    why = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return f"{target}: disk full, could not be written ({why})"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{target}: not writable ({why})"
    return f"{target}: could not be written ({why})"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = _os_write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises rather than returning 0
            raise OSError(28, "No space left on device")
        view = view[n:]


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically: temp file beside it, fsync, rename.

    Raises
    ------
    WriteError
        Naming ``path`` (disk full, permission denied, ...); nothing is left at ``path`` that
        was not there before, and no temporary file stays behind.
    """
    out = Path(path)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, WriteError):
            raise
        raise WriteError(describe_os_error(out, exc)) from exc
    return out


def append_durable(path: str | os.PathLike[str], data: bytes) -> None:
    """Append ``data`` to ``path`` in one write and fsync it.

    On failure the file is cut back to its previous length (best effort: when even that fails,
    a reader that checks its records, such as the benchmark's resume, drops the partial tail).

    Raises
    ------
    WriteError
        Naming ``path``.
    """
    out = Path(path)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WriteError(describe_os_error(out, exc)) from exc
    try:
        start = os.fstat(fd).st_size
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise WriteError(describe_os_error(out, exc)) from exc
    finally:
        os.close(fd)
