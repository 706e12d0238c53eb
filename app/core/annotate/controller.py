"""The annotation workflow as plain data and verbs: no Qt, no napari, no threads of its own.

An :class:`AnnotationController` owns everything a clinician's session is made of: the open
image and its label map with undo/redo (:class:`~app.core.annotate.session.SegmentSession`),
the prompts of the object being built (:class:`~app.core.annotate.prompt_store.PromptStore`),
the current slice and window, the model, the candidates on screen and which one is chosen, the
label the next object gets, whether the labels are exported, and the session log
(:mod:`~app.core.annotate.journal`) that is both the crash-recovery journal and a replayable
record of the annotation effort.

It speaks through :attr:`AnnotationController.events` (psygnal signals); the Segment dock and the
layer binding in :mod:`app.widgets` are views that call the verbs and draw the events. Model
work goes to a :class:`~app.core.annotate.scheduler.Scheduler`, so the engine is only ever
called from the scheduler's engine thread and the controller never blocks on a model.

A session reads like the user's::

    c = AnnotationController(engine=Engine(load_model("litemedsam_points")))
    c.open(volume)
    c.set_box([94, 40, 592, 438])        # candidates arrive (at once with ImmediateScheduler)
    c.choose(0)
    c.accept()                           # label 1, durable in the session log
    c.add_point(300, 200)                # still an object click
    c.undo()
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal, SignalGroup

from app.core.annotate import journal as _journal
from app.core.annotate.prompt_store import PromptStore
from app.core.annotate.propagation import PropagationStep, propagate_object
from app.core.annotate.scheduler import ImmediateScheduler, Scheduler
from app.core.annotate.session import SegmentSession, box_from_mask, choose_candidate
from app.core.image import Volume, Window
from app.core.models.base import Candidates, Prompt

__all__ = [
    "AnnotationController",
    "ControllerEvents",
    "CandidateSet",
    "AcceptedObject",
    "ObjectSummary",
    "object_colour",
    "ModelIdentity",
    "Decision",
    "UnsavedWorkError",
    "AUTO_MODEL",
    "resolve_model_name",
    "model_identity",
    "image_digest",
]

#: the default model choice: boxes go to LiteMedSAM's own decoder, clicks (alone, with a box
#: or with a previous mask) to the decoder fine-tuned for clicks. ``litemedsam_points`` does
#: exactly this routing (its manifest's ``box_decoder`` is ``"base"``).
AUTO_MODEL = "auto"
_AUTO_TARGET = "litemedsam_points"
#: neighbouring slices embedded ahead of time around the shown one (each side)
PREFETCH_RADIUS = 3


def resolve_model_name(name: str) -> str:
    """The registry model behind a model choice (``"auto"`` -> the routing click model)."""
    return _AUTO_TARGET if name in ("", AUTO_MODEL) else name


class Decision(enum.Enum):
    """The user's answer when unexported labels would be left behind."""

    SAVE = "save"  # the callback has exported (the controller checks that it worked)
    DISCARD = "discard"
    CANCEL = "cancel"


class UnsavedWorkError(RuntimeError):
    """Leaving the image would drop accepted labels that were never exported."""


class ControllerEvents(SignalGroup):
    """What views listen to. Every signal is emitted on the controller's thread."""

    image_changed = Signal(object)  # the new Volume (or None when closed)
    slice_changed = Signal(int)
    window_changed = Signal(object)  # Window
    prompts_changed = Signal()  # clicks / boxes / refine target / sign
    candidates_changed = Signal(object)  # CandidateSet or None
    selection_changed = Signal(int)
    labels_changed = Signal()  # the label map (or which objects are shown) changed
    objects_changed = Signal()  # an object was added, changed, named, hidden or scored
    history_changed = Signal()  # undo/redo availability, dirty state, next label
    model_changed = Signal(str)  # a model is ready (its registry name)
    model_failed = Signal(str, str)  # (name, message)
    status = Signal(str)
    hint = Signal(str)  # how the prompt fits the model; "" clears it
    error = Signal(str)  # something failed; the view shows it as an error
    task_progress = Signal(int, int)  # (done, total) of a propagation
    task_finished = Signal(str)  # "done" / "cancelled" / "failed"
    prefetch_progress = Signal(int, int)
    truth_changed = Signal()


@dataclass(frozen=True)
class ModelIdentity:
    """Which model, and which weights exactly (for the session log and replay)."""

    name: str
    title: str
    weights_sha256: str = ""
    cache_token: str = ""
    backend: str = ""  # e.g. "torch", "onnx": replays are bit for bit on the same backend


@dataclass(frozen=True)
class CandidateSet:
    """The candidates on screen for one prompt on one slice."""

    z: int
    prompt: Prompt
    candidates: Candidates
    #: indices into ``candidates`` that are shown (1 when the model's outputs cannot be ranked)
    shown: tuple[int, ...]
    preselected: int
    #: the title of the model (or decoder) that answered
    answered_by: str
    latency_s: float
    note: str = ""

    def usable(self, index: int) -> bool:
        """False for an empty mask: it cannot be accepted."""
        return bool(self.candidates.masks[index].any())


@dataclass(frozen=True)
class ObjectSummary:
    """One accepted object as the Objects panel lists it."""

    label: int
    name: str
    colour: tuple[int, int, int]  # RGB 0-255: the overlay's, the DICOM SEG's, ITK-SNAP's
    n_voxels: int
    size: float  # mL for volumes, mm² for 2D images (cm³ = mL)
    size_unit: str  # "mL" or "mm²" (pixels when the spacing is unknown: "px")
    snomed: str = ""  # SNOMED CT concept id when the name is a known term
    #: IoU with the ground-truth label it overlaps most, on the slices the object has
    truth_iou: float | None = None
    visible: bool = True


def object_colour(label: int) -> tuple[int, int, int]:
    """The one palette objects are drawn in and exported with (DICOM SEG, ITK-SNAP)."""
    from app.core.io.seg import SEGMENT_COLOURS

    return tuple(SEGMENT_COLOURS[(int(label) - 1) % len(SEGMENT_COLOURS)])  # type: ignore


@dataclass(frozen=True)
class AcceptedObject:
    label: int
    z: int
    n_px: int
    #: annotation effort: clicks, boxes and seconds from the first prompt to the accept
    effort: dict[str, float] = field(default_factory=dict)


def _array_digest(array: np.ndarray) -> str:
    """Content hash of an array, its shape and dtype included."""
    h = hashlib.blake2b(digest_size=16)
    a = np.ascontiguousarray(array)
    h.update(f"{a.shape}|{a.dtype}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def image_digest(volume: Volume) -> str:
    """Content hash of the pixels: which image a log belongs to."""
    return _array_digest(volume.pixels)


_labels_digest = _array_digest  # has the label map changed since the last export?


def model_identity(model) -> ModelIdentity:
    """Name, title and weights digest of a loaded model (hashes the checkpoint: call it off the
    GUI thread)."""
    from app.core.models.checkpoints import sha256_file

    name = str(getattr(model, "name", type(model).__name__))
    try:
        from app.core.models.registry import get_spec

        title = get_spec(name).title
    except Exception:  # noqa: BLE001 - a model outside the registry keeps its name
        title = name
    path = getattr(model, "checkpoint_path", None)
    sha = ""
    if path and os.path.isfile(str(path)):
        try:
            sha = sha256_file(path)
        except OSError:
            sha = ""
    token = model.cache_token() if hasattr(model, "cache_token") else name
    try:
        from app.core.models.backends import model_backend

        backend = model_backend(model)
    except Exception:  # noqa: BLE001 - a model outside the registry has no backend choice
        backend = ""
    return ModelIdentity(name=name, title=title, weights_sha256=sha, cache_token=str(token),
                         backend=backend)


def _answered_by(model, identity: ModelIdentity, prompt: Prompt) -> str:
    """Which decoder answers ``prompt``: a routing model sends box-only prompts to its base."""
    base = getattr(model, "base", None) if hasattr(model, "box_decoder") else None
    if base is not None and prompt.has_box and not prompt.has_points and \
            prompt.mask_logits is None:
        try:
            from app.core.models.registry import get_spec

            return get_spec(base.name).title
        except Exception:  # noqa: BLE001
            return str(base.name)
    return identity.title


class AnnotationController:
    """One clinician's annotation workflow (see the module docstring).

    Parameters
    ----------
    scheduler : Scheduler, optional
        Where model work runs; default :class:`ImmediateScheduler` (inline, for tests/replay).
    engine : Engine, optional
        A ready engine (tests, replay); otherwise call :meth:`set_model`.
    log_dir : path, optional
        Folder for session logs (the app passes ``state_dir() / "sessions"``); None: no log.
    confirm_unsaved : callable (reason) -> Decision, optional
        Asked before unexported labels would be left behind (another image, quit). Without
        it, leaving raises :class:`UnsavedWorkError` unless ``discard=True`` is passed.
    """

    def __init__(self, *, scheduler: Scheduler | None = None, engine=None,
                 log_dir: str | os.PathLike | None = None,
                 confirm_unsaved: Callable[[str], Decision] | None = None,
                 prefetch_radius: int = PREFETCH_RADIUS):
        self.events = ControllerEvents()
        self.scheduler: Scheduler = scheduler or ImmediateScheduler()
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.confirm_unsaved = confirm_unsaved
        self.prefetch_radius = int(prefetch_radius)
        self.session: SegmentSession | None = None
        self.prompts: PromptStore | None = None
        self.truth: np.ndarray | None = None  # (Z, Y, X) ground-truth labels, optional
        self.z = 0
        self.positive = True
        self.next_label = 1
        self.auto_label = True
        self.selected_label = 0  # the accepted object that refine/delete/propagate act on
        self.names: dict[int, str] = {}
        self.hidden: set[int] = set()  # objects the user hid in the views
        self.candidate_set: CandidateSet | None = None
        self.selected = -1
        self.engine = None
        self.model_choice = AUTO_MODEL
        self.backend: str | None = None  # None: $SAMSCOPE_BACKEND or "auto"
        self.identity: ModelIdentity | None = None
        self.loading_model = ""
        self.log: _journal.SessionLog | None = None
        self.log_problem = ""
        self.task_running = False
        self.latencies_s: list[float] = []
        self._cache_slots = 64
        self._generation = 0  # bumps on anything that makes pending predictions stale
        self._embedded: set[tuple] = set()
        self._saved_digest: str | None = None
        self._effort = self._new_effort()
        self._task_masks: dict[int, np.ndarray] = {}
        self._task_messages: list[str] = []
        self._task_label = 0
        self._task_z0 = 0
        if engine is not None:
            self.set_engine(engine)

    # ======================================================================================
    # state
    # ======================================================================================
    @property
    def volume(self) -> Volume | None:
        return None if self.session is None else self.session.volume

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.session is None else self.session.labels

    @property
    def candidates(self) -> Candidates | None:
        return None if self.candidate_set is None else self.candidate_set.candidates

    @property
    def can_undo(self) -> bool:
        return self.session is not None and self.session.undo_stack.can_undo

    @property
    def can_redo(self) -> bool:
        return self.session is not None and self.session.undo_stack.can_redo

    @property
    def has_unsaved_work(self) -> bool:
        """Accepted labels that no export holds (what a quit or another image would lose)."""
        if self.session is None or not self.session.labels.any():
            return False
        return _labels_digest(self.session.labels) != self._saved_digest

    @property
    def model_title(self) -> str:
        return self.identity.title if self.identity else ""

    @property
    def log_path(self) -> Path | None:
        return None if self.log is None else self.log.path

    def selected_mask(self) -> np.ndarray | None:
        cs = self.candidate_set
        if cs is None or self.selected < 0:
            return None
        return cs.candidates.masks[self.selected]

    def prompt(self, z: int | None = None) -> Prompt | None:
        """The prompt the model gets for slice ``z`` (default: the current one)."""
        if self.prompts is None:
            return None
        z = self.z if z is None else int(z)
        logits = None
        if self.prompts.refine_label:
            logits = self.session.object_logits.get((z, self.prompts.refine_label))
        return self.prompts.to_prompt(z, logits)

    def objects(self) -> list[ObjectSummary]:
        """Every accepted object: name, colour, size, SNOMED code, IoU with its ground truth."""
        from app.core.metrics import iou
        from app.core.terminology import find_term

        if self.session is None:
            return []
        labels = self.session.labels
        counts = np.bincount(labels.ravel(), minlength=2)
        vol = self.session.volume
        sz, sy, sx = (float(s) for s in vol.spacing_mm)
        if not vol.spacing_known:
            per, unit = 1.0, "px"
        elif vol.is_2d:
            per, unit = sy * sx, "mm²"
        else:
            per, unit = sz * sy * sx / 1000.0, "mL"
        out = []
        for v in np.flatnonzero(counts[1:]) + 1:
            v = int(v)
            name = self.names.get(v, "")
            term = find_term(name) if name else None
            truth_iou = None
            if self.truth is not None:
                # on the slices the object has (annotating slice by slice is not an error)
                zs = np.flatnonzero((labels == v).any(axis=(1, 2)))
                mine = labels[zs] == v
                values, n = np.unique(self.truth[zs][mine], return_counts=True)
                keep = values != 0
                if keep.any():
                    truth_iou = iou(mine, self.truth[zs] == values[keep][np.argmax(n[keep])])
                else:
                    truth_iou = 0.0
            out.append(ObjectSummary(
                label=v, name=name, colour=object_colour(v), n_voxels=int(counts[v]),
                size=float(counts[v]) * per, size_unit=unit,
                snomed=term.code if term else "", truth_iou=truth_iou,
                visible=v not in self.hidden))
        return out

    def set_visible(self, label: int, visible: bool) -> None:
        """Show or hide object ``label`` in the views (the label map is unchanged)."""
        (self.hidden.discard if visible else self.hidden.add)(int(label))
        self.events.labels_changed.emit()
        self.events.objects_changed.emit()

    def object_labels(self) -> list[int]:
        """The label values present in the label map, ascending."""
        if self.session is None:
            return []
        return [int(v) for v in np.unique(self.session.labels) if v]

    # ======================================================================================
    # images
    # ======================================================================================
    def may_leave(self, reason: str, *, discard: bool = False) -> bool:
        """True when the open image may be left: nothing unexported, or the user saved or
        discarded it. ``reason`` is shown to the user ("open another image", "quit")."""
        if not self.has_unsaved_work:
            return True
        if discard:
            self.discard_unsaved()
            return True
        if self.confirm_unsaved is None:
            raise UnsavedWorkError(
                f"{len(self.object_labels())} accepted object(s) on "
                f"{Path(self.volume.source).name or 'this image'} are not exported; export "
                f"them or discard them before you {reason}")
        decision = self.confirm_unsaved(reason)
        if decision is Decision.DISCARD:
            self.discard_unsaved()
            return True
        if decision is Decision.SAVE:
            return not self.has_unsaved_work  # the export may have failed or been cancelled
        return False

    def open(self, volume: Volume, truth: np.ndarray | None = None, *,
             discard: bool = False) -> bool:
        """Start annotating ``volume`` (asks first when unexported labels would be left).

        Returns False when the user cancelled.
        """
        if not self.may_leave("open another image", discard=discard):
            self._status("Kept the current image: its labels are not exported yet.")
            return False
        self._close_log("opened another image")
        self.scheduler.cancel_predictions()
        self.scheduler.cancel_task()
        self.scheduler.prefetch([])
        self._generation += 1
        self.session = SegmentSession(volume)
        self.prompts = PromptStore(volume.shape[1:], on_change=self.events.prompts_changed.emit)
        self.truth = None
        self.z = 0
        self.positive = True
        self.names = {}
        self.hidden = set()
        self.next_label, self.auto_label, self.selected_label = 1, True, 0
        self.candidate_set, self.selected = None, -1
        self._embedded.clear()
        self._saved_digest = None
        self._effort = self._new_effort()
        self.task_running = False
        self.session.undo_stack.on_change = self._on_history
        self._open_log(volume)
        self.events.image_changed.emit(volume)
        self.events.slice_changed.emit(self.z)
        self.events.window_changed.emit(self.session.window)
        self.events.prompts_changed.emit()
        self.events.candidates_changed.emit(None)
        self.events.history_changed.emit()
        self.events.labels_changed.emit()
        if truth is not None:
            self.set_truth(truth)
        self._prefetch()
        self._status("Ready: draw a box around the object (or click on it).")
        return True

    def open_path(self, path, truth_path=None, *, discard: bool = False,
                  on_done: Callable[[bool], None] | None = None) -> bool:
        """Ask about unexported labels first, then read ``path`` in the background and open it
        (``truth_path``: ground-truth labels aligned to it). False when the user cancelled."""

        def read():
            from app.core.io import read_image, read_labels

            vol = read_image(path)
            return vol, (read_labels(truth_path, vol) if truth_path else None)

        return self._open_in_background(read, f"Reading {path} …", f"Could not open {path}",
                                        discard=discard, on_done=on_done)

    def open_sample(self, which: str, *, discard: bool = False,
                    on_done: Callable[[bool], None] | None = None) -> bool:
        """Open a bundled sample (``"ultrasound"``, ``"ct"``) with its ground truth."""

        def read():
            from app.core.io.samples import load_sample

            return load_sample(which)

        return self._open_in_background(read, f"Opening the {which} sample …",
                                        f"Could not open the {which} sample",
                                        discard=discard, on_done=on_done)

    def _open_in_background(self, read: Callable[[], tuple], busy: str, failed: str, *,
                            discard: bool, on_done: Callable[[bool], None] | None) -> bool:
        """Ask first, then ``read()`` -> (volume, truth or None) off this thread, then open."""
        if not self.may_leave("open another image", discard=discard):
            self._status("Kept the current image: its labels are not exported yet.")
            return False
        self._status(busy)

        def done(value, error):
            ok = False
            if error is not None:
                self._error(f"{failed}: {error}")
            else:
                ok = self.open(value[0], value[1], discard=True)
            if on_done is not None:
                on_done(ok)

        self.scheduler.background(read, done)
        return True

    def set_truth(self, truth: np.ndarray | None) -> None:
        """Ground-truth labels (Z, Y, X) to score the candidates against (None: none)."""
        if truth is not None:
            truth = np.asarray(truth)
            if truth.ndim == 2:
                truth = truth[None]
            if self.session is None or truth.shape != self.session.labels.shape:
                self._error(f"ground truth of shape {truth.shape} does not fit the image "
                            f"{None if self.session is None else self.session.labels.shape}")
                return
        self.truth = truth
        self.events.truth_changed.emit()
        self.events.objects_changed.emit()

    def truth_mask(self, z: int | None = None) -> np.ndarray | None:
        """The ground truth for the candidates on slice ``z``: the truth label they overlap
        most (all truth labels when they overlap none); None without ground truth."""
        if self.truth is None:
            return None
        z = self.z if z is None else z
        sl = self.truth[z]
        cs = self.candidate_set
        if cs is not None and cs.z == z:
            union = cs.candidates.masks[list(cs.shown)].any(axis=0)
            values, counts = np.unique(sl[union], return_counts=True)
            keep = values != 0
            if keep.any():
                return sl == values[keep][np.argmax(counts[keep])]
        return sl != 0

    def truth_scores(self) -> list[tuple[float, float]] | None:
        """(IoU, Dice) of each shown candidate against :meth:`truth_mask`; None without GT."""
        from app.core.metrics import dice, iou

        cs = self.candidate_set
        truth = self.truth_mask()
        if cs is None or truth is None:
            return None
        return [(iou(cs.candidates.masks[i], truth), dice(cs.candidates.masks[i], truth))
                for i in cs.shown]

    def set_slice(self, z: int) -> None:
        if self.session is None:
            return
        z = int(np.clip(int(z), 0, self.session.volume.n_slices - 1))
        if z == self.z:
            return
        self.z = z
        self._journal("slice", z=z)
        self._invalidate()
        self.events.slice_changed.emit(z)
        self._prefetch()
        self._request_prediction()

    def set_window(self, window: Window) -> None:
        """Show (and feed the model) the image through ``window``."""
        if self.session is None or window == self.session.window:
            return
        self.session.window = window
        self._journal("window", center=window.center, width=window.width, name=window.name)
        self._invalidate()
        self.events.window_changed.emit(window)
        self._prefetch()
        self._request_prediction()

    # ======================================================================================
    # models
    # ======================================================================================
    def set_engine(self, engine, identity: ModelIdentity | None = None) -> None:
        """Use a ready engine (its model's identity is computed here when not given)."""
        self.engine = engine
        self.identity = identity or model_identity(engine.model)
        self.loading_model = ""
        try:
            st = engine.stats
            per = st.cache_bytes / st.cache_entries if st.cache_entries else 4 * 2**20
            self._cache_slots = max(2, int(st.cache_limit_bytes // max(per, 1)))
        except AttributeError:
            self._cache_slots = 64
        self._journal_model()
        self._invalidate()
        self.events.model_changed.emit(self.identity.name)
        self._prefetch()
        self._request_prediction()

    def set_model(self, choice: str, *, download: bool = False,
                  on_progress: Callable[[int, int], None] | None = None,
                  device: str | None = None) -> None:
        """Load the model ``choice`` (``"auto"`` or a registry name) in the background;
        predictions resume with it when it is ready. The current model answers meanwhile."""
        name = resolve_model_name(choice)
        self.model_choice = choice
        self.loading_model = name
        self._status(f"Loading {name}…")

        def load():
            from app.core.engine import Engine, configure_torch_threads, select_device
            from app.core.models.registry import load_model

            configure_torch_threads()
            model = load_model(name, device=select_device(device), download=download,
                               on_progress=on_progress, backend=self.backend)
            return Engine(model), model_identity(model)

        def done(value, error):
            if self.loading_model != name:
                return  # another model was chosen meanwhile
            self.loading_model = ""
            if error is not None:
                self.events.model_failed.emit(name, str(error))
                self._error(f"Could not load {name}: {error}")
                return
            self.set_engine(*value)
            self._status(f"{self.identity.title} ready.")

        self.scheduler.background(load, done)

    # ======================================================================================
    # prompts
    # ======================================================================================
    def set_positive(self, positive: bool) -> None:
        """The next clicks mark the object (True) or the background (False)."""
        positive = bool(positive)
        if positive != self.positive:
            self.positive = positive
            self.events.prompts_changed.emit()

    def toggle_positive(self) -> None:
        self.set_positive(not self.positive)

    def add_point(self, x: float, y: float, positive: bool | None = None,
                  z: int | None = None) -> None:
        """A click at pixel (x = column, y = row); ``positive`` None uses the current sign."""
        if self.prompts is None:
            return
        z = self.z if z is None else int(z)
        sign = self.positive if positive is None else bool(positive)
        edit = self.prompts.add_click(z, x, y, sign)
        if edit is not None:
            self._effort_tick(clicks=1)
            c = self.prompts.clicks(z)[-1]
            self._journal("click", z=z, x=c.x, y=c.y, positive=c.positive)
            self._push_prompt_edit(edit)

    def remove_points(self, indices, z: int | None = None) -> None:
        """Remove clicks by their index among slice ``z``'s clicks."""
        if self.prompts is None:
            return
        z = self.z if z is None else int(z)
        edit = self.prompts.remove_clicks(z, list(indices))
        if edit is not None:
            self._journal("remove_clicks", z=z, indices=sorted(int(i) for i in indices))
            self._push_prompt_edit(edit)

    def move_point(self, index: int, x: float, y: float, z: int | None = None) -> None:
        if self.prompts is None:
            return
        z = self.z if z is None else int(z)
        edit = self.prompts.move_click(z, int(index), x, y)
        if edit is not None:
            self._journal("move_click", z=z, index=int(index), x=float(x), y=float(y))
            self._push_prompt_edit(edit)

    def set_box(self, box_xyxy, z: int | None = None) -> None:
        """The box ``[x0, y0, x1, y1]`` (inclusive pixel corners) on slice ``z``; it replaces
        the slice's earlier box."""
        if self.prompts is None:
            return
        z = self.z if z is None else int(z)
        try:
            edit = self.prompts.set_box(z, box_xyxy)
        except ValueError as exc:
            self._error(str(exc))
            self.events.prompts_changed.emit()  # the view drops the rejected rectangle
            return
        if edit is not None:
            self._effort_tick(boxes=1)
            self._journal("box", z=z, box=self.prompts.box(z))
            self._push_prompt_edit(edit)

    def clear_box(self, z: int | None = None) -> None:
        if self.prompts is None:
            return
        z = self.z if z is None else int(z)
        edit = self.prompts.clear_box(z)
        if edit is not None:
            self._journal("clear_box", z=z)
            self._push_prompt_edit(edit)

    def clear_prompts(self) -> None:
        """Remove every click and box (and stop refining); undoable."""
        if self.prompts is None:
            return
        edit = self.prompts.clear()
        if edit is not None:
            self._journal("clear_prompts")
            self._effort = self._new_effort()
            self._push_prompt_edit(edit)

    def _push_prompt_edit(self, edit) -> None:
        self.session.undo_stack.push(edit)
        self._request_prediction()

    # ======================================================================================
    # prediction
    # ======================================================================================
    def _invalidate(self) -> None:
        """Forget candidates and make pending predictions stale."""
        self._generation += 1
        self.scheduler.cancel_predictions()
        self._drop_candidates()

    def _drop_candidates(self) -> None:
        if self.candidate_set is not None:
            self.candidate_set, self.selected = None, -1
            self.events.candidates_changed.emit(None)

    def _request_prediction(self) -> None:
        if self.session is None:
            return
        z, prompt = self.z, self.prompt()
        self._generation += 1
        gen = self._generation
        if prompt is None:
            self.scheduler.cancel_predictions()
            self.events.hint.emit("")
            self._drop_candidates()
            return
        engine, identity = self.engine, self.identity
        if engine is None:
            self._status("The model is still loading; the prediction follows.")
            return
        caps = engine.model.capabilities
        if prompt.has_points and not prompt.has_box and not caps.points:
            # a box model cannot answer clicks alone: say so, offer nothing to accept
            self.scheduler.cancel_predictions()
            self._drop_candidates()
            self.events.hint.emit(
                f"{identity.title} is trained on boxes: clicks alone give no usable mask. "
                "Draw a box around the object (clicks then refine it), or choose "
                "'Automatic' or 'LiteMedSAM (points)' in the model list.")
            self._status("No candidates: this model needs a box.")
            return
        self.events.hint.emit("")
        session = self.session
        image = session.image(z)
        key = (id(session), z, session.window)
        submitted = time.perf_counter()

        def job():
            return engine.predict(engine.embed(image), prompt)

        def done(cands, error):
            if gen != self._generation or session is not self.session:
                return
            self._embedded.add(key)
            if error is not None:
                self._error(f"Prediction failed: {error}")
                return
            self._show_candidates(z, prompt, cands, engine, identity,
                                  time.perf_counter() - submitted)

        if key not in self._embedded:  # a cached slice answers in a blink: no message
            self._status(f"Computing the embedding of slice {z + 1}… (a few seconds, once per "
                         "slice)")
        self.scheduler.predict(job, done)

    def _show_candidates(self, z, prompt, cands: Candidates, engine, identity, latency_s):
        ranked = cands.meaningful and len(cands) > 1
        shown = tuple(range(len(cands))) if ranked else (0,)
        pre = choose_candidate(cands)
        answered_by = _answered_by(engine.model, identity, prompt)
        note = ""
        if not ranked and len(cands) > 1:
            note = (f"{answered_by} gives one usable mask for this prompt: its extra outputs "
                    "are near-copies whose scores cannot be ranked.")
        cs = CandidateSet(z=z, prompt=prompt, candidates=cands, shown=shown, preselected=pre,
                          answered_by=answered_by, latency_s=latency_s, note=note)
        self.latencies_s.append(latency_s)
        self.candidate_set, self.selected = cs, pre
        if not any(cs.usable(i) for i in shown):
            self.events.hint.emit(f"{cs.answered_by} found no object for this prompt (empty "
                                  "mask): draw a box around the object or click inside it.")
        self.events.candidates_changed.emit(cs)
        self.events.selection_changed.emit(pre)
        keys = "1/2/3 to choose, " if len(shown) > 1 else ""
        self._status(f"{len(shown)} candidate(s) from {cs.answered_by} in "
                     f"{latency_s * 1000:.0f} ms; {keys}Enter to accept.")

    def _prefetch(self) -> None:
        if self.session is None or self.engine is None:
            return
        session, engine, n = self.session, self.engine, self.session.volume.n_slices
        order = [self.z]
        for d in range(1, self.prefetch_radius + 1):
            order += [zz for zz in (self.z + d, self.z - d) if 0 <= zz < n]
        # keep the batch within the engine's cache so prefetching never evicts the shown slice
        order = order[: max(1, self._cache_slots - 1)]
        window = session.window

        def job(zz):
            def run():
                engine.embed(session.image(zz))
            return run

        def progress(done, total):
            # prefetch reports come on the controller's thread, in order
            for zz in order[:done]:
                self._embedded.add((id(session), zz, window))
            self.events.prefetch_progress.emit(done, total)

        self.scheduler.prefetch([job(zz) for zz in order], progress)

    def choose(self, index: int) -> bool:
        """Select candidate ``index`` (among the shown ones)."""
        cs = self.candidate_set
        if cs is None or index not in cs.shown:
            return False
        if index != self.selected:
            self.selected = int(index)
            self._journal("choose", index=int(index))
            self.events.selection_changed.emit(self.selected)
        return True

    # ======================================================================================
    # labels
    # ======================================================================================
    def set_label(self, label: int) -> None:
        """The label value the next accepted object gets."""
        label = int(label)
        if label < 1:
            raise ValueError(f"label must be positive, got {label}")
        if label != self.next_label:
            self.next_label = label
            self._journal("label", label=label)
            self.events.history_changed.emit()

    def set_name(self, label: int, name: str) -> None:
        """Name object ``label`` (written into exports, e.g. DICOM SEG segment labels)."""
        name = str(name).strip()
        if name:
            self.names[int(label)] = name
        else:
            self.names.pop(int(label), None)
        self._journal("name", label=int(label), name=name)
        self.events.objects_changed.emit()

    def select_object(self, label: int) -> None:
        """The accepted object that Refine, Delete and Propagate act on."""
        self.selected_label = int(label)
        self.events.history_changed.emit()

    def accept(self) -> AcceptedObject | None:
        """Write the chosen candidate into the label map as one undoable step (the prompts
        are cleared in the same step), durable in the session log before it returns.

        Returns None (and says why) when there is nothing acceptable."""
        cs = self.candidate_set
        if self.session is None or cs is None or self.selected < 0:
            self._status("Nothing to accept: prompt the model first.")
            return None
        if not cs.usable(self.selected):
            self._status("The chosen candidate is empty: nothing to accept.")
            return None
        i = self.selected
        return self._accept(cs.z, cs.candidates.masks[i], logits=cs.candidates.low_res_logits[i],
                            candidate=i, prompt=cs.prompt, answered_by=cs.answered_by)

    def accept_mask(self, mask: np.ndarray, z: int | None = None) -> AcceptedObject | None:
        """Accept a given bool (H, W) mask on slice ``z`` (replay of a recorded log, scripts)."""
        if self.session is None:
            return None
        z = self.z if z is None else int(z)
        return self._accept(z, np.asarray(mask, bool), logits=None, candidate=-1,
                            prompt=self.prompt(z), answered_by="")

    def _accept(self, z, mask, *, logits, candidate, prompt, answered_by):
        refine = self.prompts.refine_label
        label = refine or self.next_label
        prompt_edit = self.prompts.clear()
        edits = [prompt_edit] if prompt_edit is not None else []
        step = self.session.accept(
            z, mask, label, replace=bool(refine), extra_edits=edits, logits=logits,
            description=(f"refine label {label}" if refine else f"accept label {label}")
            + (f" on slice {z + 1}" if self.session.volume.n_slices > 1 else ""))
        effort = self._effort_summary()
        self._effort = self._new_effort()
        obj = AcceptedObject(label=label, z=z, n_px=int(mask.sum()), effort=effort)
        self.selected_label = label
        self._journal("accept", durable=True, z=z, label=label, refine=bool(refine),
                      candidate=candidate, answered_by=answered_by,
                      prompt=_prompt_json(prompt), mask=_journal.encode_mask(mask),
                      effort=effort)
        if step is None:
            self._status(f"Label {label} was already exactly this mask.")
        self._invalidate()
        self._after_labels_change()
        self._status(f"Accepted label {label} ({obj.n_px} px)" +
                     ("" if self.log_problem else "; saved in the session log") + ".")
        return obj

    def undo(self) -> str | None:
        """Undo the last step (a label edit or a prompt edit); its description, or None."""
        return self._history_step("undo")

    def redo(self) -> str | None:
        return self._history_step("redo")

    def _history_step(self, kind: str) -> str | None:
        if self.session is None:
            return None
        what = self.session.undo() if kind == "undo" else self.session.redo()
        self._journal(kind, durable=True)
        if what is None:
            self._status(f"Nothing to {kind}.")
            return None
        self._status(f"{'Undid' if kind == 'undo' else 'Redid'}: {what}.")
        self._invalidate()
        self._after_labels_change()
        self._request_prediction()
        return what

    def refine(self, label: int | None = None, z: int | None = None) -> bool:
        """Prompt accepted object ``label`` on slice ``z`` again, its box drawn and its logits
        fed back; the next accept replaces it. False when it is empty there."""
        if self.session is None:
            return False
        label = int(label or self.selected_label or self.next_label - 1)
        z = self.z if z is None else int(z)
        box = box_from_mask(self.session.labels[z] == label)
        if box is None:
            self._status(f"Label {label} is empty on this slice: nothing to refine.")
            return False
        edit = self.prompts.set_refine(label, z, box)
        self._journal("refine", z=z, label=label)
        self.selected_label = label
        self._effort = self._new_effort()
        if edit is not None:
            self._push_prompt_edit(edit)
        self._status(f"Refining label {label}: add clicks (object or background), then Enter "
                     "to replace it.")
        return True

    def delete_label(self, label: int | None = None) -> bool:
        """Clear object ``label`` everywhere (one undoable step)."""
        if self.session is None:
            return False
        label = int(label or self.selected_label)
        step = self.session.delete_label(label)
        if step is None:
            self._status(f"Label {label} is empty.")
            return False
        self._journal("delete", durable=True, label=label)
        self._after_labels_change()
        self._status(f"Deleted label {label} (Ctrl+Z brings it back).")
        return True

    def restore_labels(self, labels: np.ndarray, names: dict[int, str] | None = None,
                       description: str = "restore recovered labels") -> bool:
        """Put a recovered label map back as one undoable step; the next object gets a label
        past the restored ones. False when it does not fit the open image."""
        if self.session is None:
            return False
        labels = np.asarray(labels)
        if labels.shape != self.session.labels.shape:
            self._error(f"The recovered labels ({labels.shape}) do not fit this image "
                        f"{self.session.labels.shape}; not restored.")
            return False
        self.session.replace_labels(labels, description)
        self.names.update({int(k): str(v) for k, v in (names or {}).items()})
        self._journal("restore", durable=True, labels=_journal.encode_labels(labels),
                      names=self.names)
        self._saved_digest = None  # restored work is not exported
        self._after_labels_change()
        self._status(f"Restored {len(self.object_labels())} object(s) (Ctrl+Z undoes this).")
        return True

    def _after_labels_change(self) -> None:
        if self.auto_label or self.next_label in self.object_labels():
            self.next_label = int(self.session.labels.max()) + 1
        self.events.labels_changed.emit()
        self.events.objects_changed.emit()
        self.events.history_changed.emit()

    def _on_history(self) -> None:
        self.events.history_changed.emit()

    # ======================================================================================
    # propagation
    # ======================================================================================
    def propagate(self, label: int | None = None) -> bool:
        """Carry object ``label`` (default: the selected one, else the newest on this slice)
        from the current slice through the volume, in the scheduler's engine thread; the
        result is one undoable step."""
        if self.session is None or self.engine is None or self.task_running:
            return False
        z0 = self.z
        label = int(label or self.selected_label or 0)
        if not label or not (self.session.labels[z0] == label).any():
            used = [int(v) for v in np.unique(self.session.labels[z0]) if v]
            if not used:
                self._status("Accept an object on this slice first, then propagate it.")
                return False
            label = used[-1]
        self.scheduler.prefetch([])
        self._task_masks, self._task_messages = {}, []
        self._task_label, self._task_z0 = label, z0
        self.task_running = True
        engine, session = self.engine, self.session
        labels = session.labels.copy()  # the engine thread reads a snapshot, never the live map

        def predict(z, prompt):
            return engine.predict(engine.embed(session.image(z)), prompt)

        steps = propagate_object(labels, predict, z0, label)
        self._status(f"Propagating label {label} from slice {z0 + 1}…")
        self.events.history_changed.emit()
        self.scheduler.run_task(steps, self._on_task_step,
                                lambda status, error: self._on_task_done(session, status, error))
        return True

    def cancel_task(self) -> None:
        self.scheduler.cancel_task()

    def _on_task_step(self, step: PropagationStep) -> None:
        if step.mask is not None:
            self._task_masks[step.z] = step.mask
        if step.stopped_because and step.stopped_because != "already labelled":
            self._task_messages.append(f"slice {step.z + 1}: {step.stopped_because}")
        self.events.task_progress.emit(step.done, step.total)

    def _on_task_done(self, session, status: str, error) -> None:
        self.task_running = False
        if session is not self.session:
            return
        label = self._task_label
        if status == "done":
            self.apply_propagation(label, self._task_masks, z0=self._task_z0)
            ends = "; ".join(self._task_messages)
            self._status(f"Propagated label {label} to {len(self._task_masks)} slice(s)." +
                         (f" Stopped: {ends}." if ends else ""))
        elif status == "cancelled":
            self._status("Propagation cancelled; nothing was changed.")
        else:
            self._error(f"Propagation failed: {error}")
        self._task_masks = {}
        self.events.task_finished.emit(status)
        self.events.history_changed.emit()
        self._prefetch()

    def apply_propagation(self, label: int, masks: dict[int, np.ndarray], z0: int = -1) -> None:
        """Write a propagation's masks ``{z: bool (H, W)}`` as one undoable step."""
        if self.session is None:
            return
        self.session.apply_slices(masks, label, f"propagate label {label}")
        self._journal("propagate", durable=True, label=int(label), z0=int(z0),
                      masks={str(z): _journal.encode_mask(m) for z, m in masks.items()})
        self._after_labels_change()

    # ======================================================================================
    # export, discard, close
    # ======================================================================================
    def export(self, path, *, overwrite: bool = True, format: str | None = None) -> Path:
        """Write the label map with the object names; afterwards the labels count as saved.

        ``format`` None: by extension (``.nii.gz``/``.nii``, ``.dcm`` DICOM SEG, ``.png``);
        ``"rtstruct"``: a DICOM RT Structure Set (contours) for a DICOM series. A NIfTI gets an
        ITK-SNAP label description beside it. Raises the writer's error (naming the file).
        """
        from app.core.io import write_labels

        if self.session is None:
            raise ValueError("no image is open")
        model = self.identity.title if self.identity else "SAMScope"
        if format == "rtstruct":
            from app.core.io.rtstruct import write_rtstruct

            out = write_rtstruct(path, self.session.labels, self.session.volume,
                                 names=self.names, overwrite=overwrite,
                                 colours=[object_colour(v) for v in range(1, 65)])
        elif format is not None:
            raise ValueError(f"unknown export format {format!r}")
        else:
            out = write_labels(path, self.session.labels, self.session.volume,
                               overwrite=overwrite, segment_names=dict(self.names) or None,
                               algorithm=f"SAMScope ({model})")
        extra = []
        if Path(out).name.endswith((".nii.gz", ".nii")):
            # names and colours for ITK-SNAP / 3D Slicer, beside the label map
            from app.core.io.itksnap import itksnap_path_for, write_itksnap_labels

            extra.append(str(write_itksnap_labels(
                itksnap_path_for(out), self.object_labels(), self.names,
                [object_colour(v) for v in range(1, 65)])))
        self._saved_digest = _labels_digest(self.session.labels)
        self._journal("export", durable=True, path=str(out), also=extra,
                      labels_digest=self._saved_digest)
        self.events.history_changed.emit()
        self._status(f"Labels written to {out}")
        return Path(out)

    def discard_unsaved(self) -> None:
        """The user chose to drop the unexported labels: the log stops offering them."""
        if self.session is not None:
            self._saved_digest = _labels_digest(self.session.labels)
            self._journal("discard", durable=True)
            self.events.history_changed.emit()

    def close(self, reason: str = "quit", *, discard: bool = False) -> bool:
        """Leave the image (quit): asks about unexported labels; False when cancelled.

        Unexported labels that were neither saved nor discarded stay in the session log and
        are offered again at the next start.
        """
        if self.session is not None and not self.may_leave(reason, discard=discard):
            return False
        self.shutdown()
        return True

    def shutdown(self) -> None:
        """Stop without asking (the process is ending): the session log is closed, never
        deleted, so unexported work is offered at the next start."""
        self.scheduler.cancel_predictions()
        self.scheduler.cancel_task()
        self._close_log("closed")

    # ======================================================================================
    # session log
    # ======================================================================================
    def _open_log(self, volume: Volume) -> None:
        self.log, self.log_problem = None, ""
        if self.log_dir is None:
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.log_dir / f"{stamp}-{os.getpid()}-{id(self) & 0xffff:04x}.jsonl"
        k = 1
        while path.exists():
            path = path.with_name(f"{stamp}-{os.getpid()}-{id(self) & 0xffff:04x}-{k}.jsonl")
            k += 1
        try:
            self.log = _journal.SessionLog(path)
        except OSError as exc:
            self._log_failed(exc, path)
            return
        self._journal("log", durable=True, format=_journal.FORMAT, pid=os.getpid(),
                      image={"source": str(volume.source), "digest": image_digest(volume),
                             "shape": list(volume.shape), "is_2d": bool(volume.is_2d),
                             "modality": volume.modality})
        w = self.session.window
        self._journal("window", center=w.center, width=w.width, name=w.name)
        self._journal_model()

    def _journal_model(self) -> None:
        if self.identity is not None:
            self._journal("model", name=self.identity.name, title=self.identity.title,
                          weights_sha256=self.identity.weights_sha256,
                          cache_token=self.identity.cache_token, backend=self.identity.backend)

    def _journal(self, action: str, *, durable: bool = False, **fields: Any) -> None:
        if self.log is None:
            return
        try:
            self.log.append(action, durable=durable, z_shown=self.z, **fields)
        except OSError as exc:
            self._log_failed(exc, self.log.path)

    def _log_failed(self, exc: OSError, path: Path) -> None:
        self.log_problem = (f"The session log {path} cannot be written ({exc}): accepted "
                            "objects are not protected against a crash; export them now.")
        if self.log is not None:
            self.log.close()
        self.log = None
        self._error(self.log_problem)

    def _close_log(self, why: str) -> None:
        if self.log is None:
            return
        unsaved = self.has_unsaved_work
        self._journal("close", durable=True, why=why, unsaved=unsaved)
        if not unsaved:  # nothing to recover: never offered again
            self._journal("retired", durable=True, why="nothing unexported")
        self.log.close()
        self.log = None

    # ======================================================================================
    # effort, messages
    # ======================================================================================
    @staticmethod
    def _new_effort() -> dict[str, Any]:
        return {"clicks": 0, "boxes": 0, "t0": None}

    def _effort_tick(self, clicks: int = 0, boxes: int = 0) -> None:
        if self._effort["t0"] is None:
            self._effort["t0"] = time.monotonic()
        self._effort["clicks"] += clicks
        self._effort["boxes"] += boxes

    def _effort_summary(self) -> dict[str, float]:
        t0 = self._effort["t0"]
        return {"clicks": int(self._effort["clicks"]), "boxes": int(self._effort["boxes"]),
                "seconds": round(time.monotonic() - t0, 3) if t0 is not None else 0.0}

    def _status(self, text: str) -> None:
        self.events.status.emit(text)

    def _error(self, text: str) -> None:
        self.events.error.emit(text)


def _prompt_json(prompt: Prompt | None) -> dict[str, Any] | None:
    if prompt is None:
        return None
    return {"points_xy": prompt.points_xy.tolist(), "point_labels": prompt.point_labels.tolist(),
            "box_xyxy": None if prompt.box_xyxy is None else prompt.box_xyxy.tolist(),
            "mask_logits": prompt.mask_logits is not None}

