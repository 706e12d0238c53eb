"""Checkpoints: where they live, how they are fetched and verified, and how they are loaded safely.

* Every checkpoint is loaded with ``torch.load(..., map_location=..., weights_only=True)``:
  a file that carries pickled code is refused (:class:`CheckpointRefusedError`) and its code is
  never run; tensors saved on a GPU land on the requested device.
* Downloads go to a per-user cache directory (``platformdirs``), with progress, a SHA-256
  check and an atomic rename, so a half-written file is never taken for a checkpoint.
* Offline, a missing checkpoint raises :class:`CheckpointMissingError` naming the file, the
  exact path to put it at and the URL to get it from.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import CheckpointMissingError, CheckpointRefusedError

__all__ = [
    "CheckpointSource",
    "cache_dir",
    "sha256_file",
    "download",
    "resolve_checkpoint",
    "load_state_dict",
]

#: environment variable that overrides the checkpoint cache directory
CACHE_ENV = "SAMSCOPE_CACHE_DIR"

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)


@dataclass(frozen=True)
class CheckpointSource:
    """Where a model's weights come from.

    Parameters
    ----------
    filename : str
        File name in the cache directory (``sam_vit_b_01ec64.pth``).
    url : str
        Official download address; ``""`` for bundled checkpoints.
    sha256 : str
        Expected SHA-256 (hex) of the file; ``""`` when not published (then not checked).
    size_bytes : int
        Expected size, 0 when unknown (for progress bars and messages).
    bundled : Callable returning str, or None
        Returns the path of a checkpoint shipped inside an installed package.
    """

    filename: str
    url: str = ""
    sha256: str = ""
    size_bytes: int = 0
    bundled: Callable[[], str] | None = None


def cache_dir() -> Path:
    """The per-user checkpoint directory (``$SAMSCOPE_CACHE_DIR`` overrides it)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("samscope", appauthor=False)) / "checkpoints"


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hash(path: Path, source: CheckpointSource) -> None:
    if not source.sha256:
        size = path.stat().st_size
        if source.size_bytes and size != source.size_bytes:
            raise CheckpointRefusedError(
                f"checkpoint {path} has {size} bytes, expected {source.size_bytes} for "
                f"{source.filename}: the file is truncated or not the official one; delete it "
                f"and download it again from {source.url or 'its source'}")
        return
    actual = sha256_file(path)
    if actual != source.sha256:
        raise CheckpointRefusedError(
            f"checkpoint {path} has SHA-256 {actual}, expected {source.sha256} for "
            f"{source.filename}: the file is corrupt or not the official one; delete it and "
            f"download it again from {source.url or 'its source'}"
        )


def _missing(source: CheckpointSource, target: Path, why: str = "") -> CheckpointMissingError:
    size = f" ({source.size_bytes / 1e6:.0f} MB)" if source.size_bytes else ""
    where = f"download {source.url}{size} and save it as {target}" if source.url else (
        f"put it at {target}")
    return CheckpointMissingError(
        f"checkpoint {source.filename} is not available{': ' + why if why else ''}; {where} "
        f"(or pass --checkpoint PATH)"
    )


def download(source: CheckpointSource, target: Path, *,
             on_progress: ProgressCallback | None = None, timeout_s: float = 30.0) -> Path:
    """Download ``source.url`` to ``target`` with a hash check and an atomic rename.

    Raises
    ------
    CheckpointMissingError
        When the network cannot be reached (the message says where to put the file by hand).
    CheckpointRefusedError
        When the downloaded bytes do not have the expected SHA-256 (nothing is kept).
    """
    import urllib.error
    import urllib.request

    if not source.url:
        raise _missing(source, target, "it has no download address")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{source.filename}.", suffix=".part",
                                    dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(source.url, timeout=timeout_s)  # noqa: S310
            except (urllib.error.URLError, OSError) as exc:
                raise _missing(source, target, f"download failed ({exc})") from None
            with response:
                total = int(response.headers.get("Content-Length") or source.size_bytes or 0)
                done = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
        actual = digest.hexdigest()
        if not source.sha256 and source.size_bytes and done != source.size_bytes:
            raise CheckpointRefusedError(
                f"downloaded {source.url} has {done} bytes, expected {source.size_bytes}; "
                f"nothing was saved")
        if source.sha256 and actual != source.sha256:
            raise CheckpointRefusedError(
                f"downloaded {source.url} has SHA-256 {actual}, expected {source.sha256}; "
                f"nothing was saved"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_checkpoint(source: CheckpointSource, checkpoint: str | os.PathLike | None = None, *,
                       download_missing: bool = False,
                       on_progress: ProgressCallback | None = None) -> tuple[Path, bool]:
    """Find the checkpoint file for ``source``.

    Order: an explicit ``checkpoint`` path (not hash-checked: a user's own fine-tuned weights
    are allowed), the bundled file, the cache directory, then a download when
    ``download_missing``.

    Returns
    -------
    path : Path
    verified : bool
        True when the file's SHA-256 was checked against ``source.sha256``.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointMissingError(f"checkpoint {path} does not exist")
        return path, False
    if source.bundled is not None:
        path = Path(source.bundled())
        if not path.is_file():
            raise CheckpointMissingError(
                f"bundled checkpoint {source.filename} is missing at {path}; reinstall the "
                f"package that ships it")
        _check_hash(path, source)  # ~0.1 s for LiteMedSAM's 39 MB
        return path, bool(source.sha256)
    target = cache_dir() / source.filename
    if target.is_file():
        _check_hash(target, source)
        return target, bool(source.sha256)
    if not download_missing:
        raise _missing(source, target)
    download(source, target, on_progress=on_progress)
    return target, bool(source.sha256)


def _unwrap(obj: Any) -> Any:
    """Accept ``state``, ``{"model": state}`` and ``{"state_dict": state}`` (training saves)."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def load_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a state dict safely: ``weights_only=True`` and an explicit ``map_location``.

    Raises
    ------
    CheckpointRefusedError
        When the file carries pickled objects other than tensors and containers (possibly
        code); nothing from it is executed.
    CheckpointMissingError
        When the file does not exist.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointMissingError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointRefusedError(
            f"checkpoint {path} was refused: it holds pickled objects that are not plain "
            f"tensors and could run code when loaded ({_unpickler_reason(exc)}); only "
            "weights-only checkpoints are accepted: ask its author for a state dict of tensors"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated/garbled files fail in many ways
        raise CheckpointRefusedError(f"checkpoint {path} could not be read as a PyTorch "
                                     f"checkpoint: {_unpickler_reason(exc)}") from None
    state = _unwrap(obj)
    if not isinstance(state, dict) or not state:
        raise CheckpointRefusedError(
            f"checkpoint {path} holds {type(state).__name__}, not a state dict of tensors")
    # checkpoints saved from DataParallel / DDP carry a "module." prefix
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _unpickler_reason(exc: BaseException) -> str:
    """The cause torch gives, without its advice to load with ``weights_only=False``.

    That advice would run the file's code; a user must never be told to follow it.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln:
            return ln.split("WeightsUnpickler error:", 1)[-1].strip().rstrip(".")[:200]
    keep = [ln for ln in lines if "weights_only" not in ln and "trust" not in ln.lower()
            and "can still be loaded" not in ln and "add_safe_globals" not in ln
            and "safe_globals" not in ln and not ln.startswith("(")
            and "docs" not in ln and "pytorch.org" not in ln]
    return (keep[0][:200] if keep else type(exc).__name__)
