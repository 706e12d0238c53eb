"""``samscope models``: list the promptable models, their status and what they can do."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models", help="list the models (bundled / cached / not downloaded) and capabilities",
        description="List the promptable models with their checkpoint status and capabilities. "
        "Checkpoints that are not bundled are looked for in the cache directory "
        "($SAMSCOPE_CACHE_DIR overrides it).")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--download", metavar="NAME",
                   help="download the checkpoint of model NAME (SHA-256 checked) and exit")
    p.set_defaults(func=run)


def _rows() -> list[dict]:
    from app.core.models.registry import checkpoint_path, list_models, model_status

    rows = []
    for spec in list_models():
        caps = spec.capabilities
        rows.append({
            "name": spec.name,
            "title": spec.title,
            "status": model_status(spec.name),
            "points": caps.points,
            "boxes": caps.boxes,
            "mask_input": caps.mask_input,
            "meaningful_multimask": caps.meaningful_multimask,
            "input_size": caps.input_size,
            "checkpoint": str(checkpoint_path(spec.name)),
            "url": spec.checkpoint.url,
            "sha256": spec.checkpoint.sha256,
            "description": spec.description,
        })
    return rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _table(rows: list[dict]) -> str:
    header = ["NAME", "MODEL", "STATUS", "POINTS", "BOXES", "3 MASKS", "INPUT"]
    body = [[r["name"], r["title"], r["status"], _yes(r["points"]), _yes(r["boxes"]),
             _yes(r["meaningful_multimask"]), f'{r["input_size"]} px'] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip()
             for line in [header, *body]]
    lines.append("")
    lines.append("POINTS: useful masks from clicks alone; 3 MASKS: the three multimask outputs "
                 "are distinct, rankable candidates.")
    lines.append("Checkpoint cache: " + str(_cache_dir()))
    return "\n".join(lines)


def _cache_dir():
    from app.core.models.checkpoints import cache_dir

    return cache_dir()


def _download(name: str) -> int:
    from app.core.models.checkpoints import resolve_checkpoint
    from app.core.models.registry import get_spec

    spec = get_spec(name)
    last = [-1]

    def progress(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else -1
        if pct != last[0]:
            last[0] = pct
            shown = f"{pct:3d} %" if total else f"{done / 1e6:.0f} MB"
            print(f"\r{name}: {shown}", end="", file=sys.stderr, flush=True)

    path, verified = resolve_checkpoint(spec.checkpoint, download_missing=True,
                                        on_progress=progress)
    print(file=sys.stderr)
    print(f"{name}: {path}" + (" (SHA-256 verified)" if verified else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.download:
        return _download(args.download)
    rows = _rows()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows))
    return 0
