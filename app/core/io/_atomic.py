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

__all__ = ["atomic_output", "check_output_path", "full_suffix"]


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
    except PermissionError as exc:
        raise WriteError(f"{out}: permission denied ({exc.strerror})") from exc
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(f"{out}: could not be written ({exc})") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
