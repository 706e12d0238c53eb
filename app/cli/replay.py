"""``samscope replay LOG``: re-run a session log headless and rebuild its label map.

With the log's own model (the default) the label map comes back bit for bit, and every accept
is checked against the mask it recorded. ``--model NAME`` sends the same clicks and boxes to
another model instead: what would it have produced? ``--recorded`` rebuilds from the recorded
masks without any model (what crash recovery does). Prints one JSON line per object
(label, slice, clicks, boxes, seconds: the annotation effort) and a summary line; ``--output``
writes the rebuilt label map (``.nii.gz``, ``.dcm`` DICOM SEG or ``.png``, by extension).
"""

from __future__ import annotations

import argparse
import json

from app.core.models.backends import BACKENDS

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="re-run a session log and rebuild its label map",
        description=__doc__.split("\n\n")[1])
    p.add_argument("log", help="a session log (.jsonl; `samscope replay --list` shows them)",
                   nargs="?")
    p.add_argument("--image", metavar="PATH",
                   help="the image, if it has moved since the session (pixels must match)")
    p.add_argument("--model", metavar="NAME",
                   help="replay the clicks with this model instead of the log's own")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="how the model runs (default: the log's own backend)")
    p.add_argument("--recorded", action="store_true",
                   help="use the recorded masks; no model is run")
    p.add_argument("--output", "-o", metavar="PATH", help="write the rebuilt label map here")
    p.add_argument("--list", action="store_true",
                   help="list this user's session logs, newest first, and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from app.core.annotate.recovery import sessions_dir
    from app.core.annotate.replay import log_summary, replay_log

    if args.list:
        for path in sorted(sessions_dir().glob("*.jsonl"), reverse=True):
            try:
                print(json.dumps(log_summary(path)))
            except (OSError, ValueError) as exc:
                print(json.dumps({"path": str(path), "error": str(exc)}))
        return 0
    if not args.log:
        raise ValueError("give a session log (or --list)")
    if args.recorded and args.model:
        raise ValueError("--recorded replays without a model; leave out --model")
    if args.output:
        out = Path(args.output)
        if not out.parent.is_dir():
            raise FileNotFoundError(f"output folder {out.parent} does not exist")
    from app.core.annotate import journal

    log = journal.read_log(args.log)
    volume = None
    if args.image or not args.recorded:
        from app.core.io import read_image

        volume = read_image(args.image or log.header["image"]["source"])
    engine = None
    model_name = None
    if not args.recorded:
        from app.core.engine import Engine, configure_torch_threads
        from app.core.models.registry import load_model

        entry = log.first("model")
        model_name = args.model or (entry or {}).get("name")
        if not model_name:
            raise ValueError(f"{args.log} names no model: pass --model or --recorded")
        configure_torch_threads()
        # the log's own backend unless told otherwise: bit-for-bit needs the same arithmetic
        backend = args.backend or ((entry or {}).get("backend") if not args.model else None)
        engine = Engine(load_model(model_name, backend=backend or None))
    result = replay_log(log, volume=volume, engine=engine)
    for e in result.effort:
        print(json.dumps({"label": e.label, "slice": e.z, "clicks": e.clicks, "boxes": e.boxes,
                          "seconds": e.seconds, "answered_by": e.answered_by}))
    summary = {
        "log": str(args.log), "source": result.source,
        "model": model_name or "recorded masks",
        "logged_model": result.model.get("name"),
        "objects": int(len(set(result.labels.ravel().tolist())) - 1),
        "accepts": len(result.effort),
        "mismatched_accepts": [{"label": lab, "slice": z, "iou_with_recorded": round(iou, 4)}
                               for lab, z, iou in result.mismatches],
        "identical_to_log": not result.mismatches,
        "problems": result.log.problems,
    }
    if args.output:
        from app.core.io import write_labels

        reference = volume if volume is not None else result.controller.volume
        summary["output"] = str(write_labels(args.output, result.labels, reference,
                                             segment_names=result.names or None,
                                             algorithm=f"SAMScope replay ({summary['model']})"))
    print(json.dumps(summary))
    same_model = args.model is None or args.model == result.model.get("name")
    return 0 if (not result.mismatches or not same_model) else 1
