"""Re-run a session log through a fresh controller, headless.

Two ways:

* **recorded** (``engine=None``): every accept writes the mask the log recorded. No model is
  needed; this is how crash recovery rebuilds the label map (:mod:`~app.core.annotate.recovery`).
* **with a model**: the clicks and boxes are sent to ``engine`` again and the chosen candidate
  is accepted. With the log's own model and weights this rebuilds the label map bit for bit
  (``mismatches`` stays empty); with another model it shows what that model would have produced
  from the same clicks.

Either way the controller's undo history is replayed too (prompt edits and label edits share
one undo stack), so undo/redo entries land exactly where they did.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.annotate import journal as _journal
from app.core.annotate.controller import AnnotationController, image_digest
from app.core.image import Volume, Window

__all__ = ["ReplayResult", "replay_log", "ObjectEffort"]

#: actions that change the label map (a log whose last one is not followed by an export or a
#: discard holds unexported work)
LABEL_ACTIONS = ("accept", "undo", "redo", "delete", "propagate", "restore")


@dataclass(frozen=True)
class ObjectEffort:
    """What one accepted object cost the annotator."""

    label: int
    z: int
    clicks: int
    boxes: int
    seconds: float
    answered_by: str


@dataclass
class ReplayResult:
    labels: np.ndarray  # (Z, Y, X) uint16
    names: dict[int, str]
    source: str
    log: _journal.LogFile
    controller: AnnotationController
    #: accepts whose mask differs from the recorded one (label, slice, IoU with the recorded)
    mismatches: list[tuple[int, int, float]] = field(default_factory=list)
    effort: list[ObjectEffort] = field(default_factory=list)
    #: True when the log's last label change was not followed by an export or a discard
    unexported: bool = False
    model: dict[str, Any] = field(default_factory=dict)


def _placeholder_volume(image: dict[str, Any]) -> Volume:
    shape = tuple(int(s) for s in image["shape"])
    return Volume(pixels=np.zeros(shape, np.uint8), is_2d=bool(image.get("is_2d")),
                  source=str(image.get("source", "")), modality=str(image.get("modality", "")))


def replay_log(log: str | os.PathLike | _journal.LogFile, *, volume: Volume | None = None,
               engine=None, check_digest: bool = True) -> ReplayResult:
    """Replay the session log ``log``.

    Parameters
    ----------
    log : path or LogFile
    volume : Volume, optional
        The image; default: read from the log's source path when ``engine`` is given, an empty
        placeholder of the recorded shape otherwise (recorded masks need no pixels).
    engine : Engine, optional
        Re-run the prompts with this engine instead of writing the recorded masks.
    check_digest : bool
        Refuse an image whose pixels differ from the logged image's (naming both).

    Raises
    ------
    ValueError
        Not a session log, the image does not match, or the log's entries are inconsistent.
    """
    lf = log if isinstance(log, _journal.LogFile) else _journal.read_log(log)
    header = lf.header
    image = header.get("image") or {}
    if volume is None:
        if engine is None:
            volume = _placeholder_volume(image)
            check_digest = False
        else:
            from app.core.io import read_image

            volume = read_image(image["source"])
    if tuple(volume.shape) != tuple(int(s) for s in image.get("shape", volume.shape)):
        raise ValueError(f"{lf.path}: the log is for an image of shape {image.get('shape')}, "
                         f"{volume.source or 'the given image'} is {volume.shape}")
    if check_digest and image.get("digest") and image_digest(volume) != image["digest"]:
        raise ValueError(f"{lf.path}: {volume.source or 'the given image'} is not the image "
                         f"this log was recorded on ({image.get('source')}): pixels differ")
    c = AnnotationController(engine=engine)
    c.open(volume)
    result = ReplayResult(labels=c.labels, names=c.names, source=str(image.get("source", "")),
                          log=lf, controller=c)
    recorded = engine is None
    for e in lf.entries[1:]:
        _apply(c, e, recorded, result)
    result.labels = c.labels.copy()
    result.names = dict(c.names)
    return result


def _apply(c: AnnotationController, e: dict[str, Any], recorded: bool,
           result: ReplayResult) -> None:
    a = e["action"]
    if a in LABEL_ACTIONS:
        result.unexported = True
    if a in ("export", "discard"):
        result.unexported = False
    if a == "model":
        result.model = {k: e.get(k) for k in ("name", "title", "weights_sha256", "backend")}
    elif a == "window":
        c.set_window(Window(float(e["center"]), float(e["width"]), str(e.get("name", ""))))
    elif a == "slice":
        c.set_slice(int(e["z"]))
    elif a == "click":
        c.add_point(float(e["x"]), float(e["y"]), bool(e["positive"]), z=int(e["z"]))
    elif a == "remove_clicks":
        c.remove_points(e["indices"], z=int(e["z"]))
    elif a == "move_click":
        c.move_point(int(e["index"]), float(e["x"]), float(e["y"]), z=int(e["z"]))
    elif a == "box":
        c.set_box(e["box"], z=int(e["z"]))
    elif a == "clear_box":
        c.clear_box(z=int(e["z"]))
    elif a == "clear_prompts":
        c.clear_prompts()
    elif a == "choose":
        c.choose(int(e["index"]))
    elif a == "label":
        c.set_label(int(e["label"]))
    elif a == "name":
        c.set_name(int(e["label"]), str(e.get("name", "")))
    elif a == "refine":
        c.refine(int(e["label"]), z=int(e["z"]))
    elif a == "accept":
        _replay_accept(c, e, recorded, result)
    elif a == "undo":
        c.undo()
    elif a == "redo":
        c.redo()
    elif a == "delete":
        c.delete_label(int(e["label"]))
    elif a == "propagate":
        if recorded:
            masks = {int(z): _journal.decode_mask(m) for z, m in e["masks"].items()}
            c.apply_propagation(int(e["label"]), masks, z0=int(e.get("z0", -1)))
        else:
            c.set_slice(int(e["z0"]))
            c.propagate(int(e["label"]))
    elif a == "restore":
        c.restore_labels(_journal.decode_labels(e["labels"]),
                         {int(k): v for k, v in (e.get("names") or {}).items()})


def _replay_accept(c: AnnotationController, e: dict[str, Any], recorded: bool,
                   result: ReplayResult) -> None:
    z, label = int(e["z"]), int(e["label"])
    want = _journal.decode_mask(e["mask"])
    if c.z != z:
        c.set_slice(z)
    if not e.get("refine") and c.next_label != label:
        c.set_label(label)
    if recorded or int(e.get("candidate", -1)) < 0:
        c.accept_mask(want, z)
    else:
        if c.candidate_set is None:
            raise ValueError(f"{result.log.path}: the replayed prompts gave no candidates for "
                             f"label {label} on slice {z + 1}")
        c.choose(int(e["candidate"]))
        got = c.selected_mask().copy()
        c.accept()
        if not np.array_equal(got, want):
            union = np.logical_or(got, want).sum()
            result.mismatches.append(
                (label, z, float(np.logical_and(got, want).sum() / union) if union else 1.0))
    eff = e.get("effort") or {}
    result.effort.append(ObjectEffort(label, z, int(eff.get("clicks", 0)),
                                      int(eff.get("boxes", 0)), float(eff.get("seconds", 0.0)),
                                      str(e.get("answered_by", ""))))


def log_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Source, time span and object count of a log, without rebuilding it."""
    lf = _journal.read_log(path)
    accepts = [e for e in lf.entries if e["action"] == "accept"]
    return {"path": str(Path(path)), "source": lf.header.get("image", {}).get("source", ""),
            "started": lf.entries[0]["t"], "last": lf.entries[-1]["t"],
            "accepts": len(accepts), "problems": lf.problems}
