"""The annotation workflow without Qt: controller, prompts, label session, log, recovery.

* :mod:`.controller`: :class:`AnnotationController`, the verbs a clinician uses and the events
  a view draws;
* :mod:`.prompt_store`: clicks and boxes per slice as data;
* :mod:`.session`: the label map and its undo history (:mod:`.undo`);
* :mod:`.propagation`: carrying an object through a volume;
* :mod:`.scheduler`: the interface the controller hands model work to;
* :mod:`.journal`, :mod:`.recovery`, :mod:`.replay`: the session log, crash recovery from it,
  and headless replay.
"""

from app.core.annotate.controller import (
    AUTO_MODEL,
    AcceptedObject,
    AnnotationController,
    CandidateSet,
    Decision,
    UnsavedWorkError,
)
from app.core.annotate.scheduler import ImmediateScheduler, Scheduler

__all__ = [
    "AUTO_MODEL",
    "AcceptedObject",
    "AnnotationController",
    "CandidateSet",
    "Decision",
    "ImmediateScheduler",
    "Scheduler",
    "UnsavedWorkError",
]
