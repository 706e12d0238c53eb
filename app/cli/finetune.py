"""``samscope finetune``: adapt a model's prompt encoder + mask decoder to a labelled dataset.

    samscope finetune DATASET --base litemedsam --minutes 10 --out my_model

DATASET is a folder of ``images/`` + ``masks/`` pairs, an MSD-style folder (``dataset.json``),
or a folder of such datasets. The result is a model folder (``decoder.pt`` + ``manifest.json``)
that ``samscope segment --model PATH`` and the app load like any registry model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers) -> None:
    from app.core.finetune import FinetuneConfig  # numpy only; no torch at CLI start

    p = subparsers.add_parser(
        "finetune", help="fine-tune a model's prompt encoder and mask decoder on labelled images",
        description="Fine-tune the prompt encoder and mask decoder of a registry model on a "
        "labelled dataset (image encoder frozen, embeddings computed once), with a validation "
        "split by case, and save it as a new model folder.")
    p.add_argument("dataset", help="folder: images/ + masks/ pairs, an MSD dataset.json folder, "
                   "or a folder of those")
    p.add_argument("--base", default="litemedsam", help="registry model to adapt "
                   "(default litemedsam)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="wall-clock budget, embedding included (default 10)")
    p.add_argument("--out", required=True, metavar="MODEL", help="model folder to write")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps at most (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of each dataset's cases held out for validation (default 0.25)")
    p.add_argument("--lr", type=float, default=FinetuneConfig.lr,
                   help=f"AdamW learning rate (default {FinetuneConfig.lr:g}, the shipped recipe's)")
    p.add_argument("--batch-size", type=int, default=0, help="prompts per step "
                   "(default 4 on CPU, 16 on GPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: automatic)")
    p.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.add_argument("--quiet", action="store_true", help="print only the final JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.core.errors import DatasetError, WriteError
    from app.core.models.finetuned import is_finetuned_dir

    out = Path(args.out)
    dataset = Path(args.dataset)
    # check everything cheap before loading a model or reading images
    if not dataset.is_dir():
        raise DatasetError(f"dataset folder {dataset} does not exist or is not a folder")
    if out.exists() and not args.overwrite:
        raise WriteError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.exists() and not is_finetuned_dir(out):
        raise WriteError(f"{out} exists and is not a fine-tuned model folder; not replacing it")
    if not 0 <= args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1); got {args.val_fraction}")

    from app.core.finetune import FinetuneConfig, finetune, load_training_samples, split_by_case
    from app.core.models.finetuned import save_finetuned
    from app.core.models.registry import get_spec

    get_spec(args.base)  # unknown names fail here, listing the known ones
    cfg = FinetuneConfig(steps=args.steps, minutes=args.minutes, seed=args.seed,
                         val_fraction=args.val_fraction, lr=args.lr, batch_size=args.batch_size)
    samples = load_training_samples(dataset)
    train, val = split_by_case(samples, cfg.val_fraction, cfg.seed)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"{len(samples)} labelled images: {len(train)} for training, {len(val)} for validation")

    def progress(p) -> None:
        if p.phase == "embedding":
            if p.done == p.total or p.done % 10 == 0:
                log(f"[{p.elapsed_s:5.0f}s] embedded {p.done}/{p.total}")
        elif p.phase == "training":
            if p.done % 10 == 0:
                log(f"[{p.elapsed_s:5.0f}s] step {p.done}/{p.total} loss {p.loss:.4f}")
        elif p.val_point_iou is not None:
            log(f"[{p.elapsed_s:5.0f}s] step {p.done}: validation IoU click "
                f"{p.val_point_iou:.3f}, box {p.val_box_iou:.3f}")
        elif p.message:
            log(f"[{p.elapsed_s:5.0f}s] {p.message}")

    name = args.name or out.name
    result = finetune(train, val, base=args.base, name=name, config=cfg, device=args.device,
                      on_progress=progress,
                      data_description={"root": str(dataset.resolve())})
    save_finetuned(result.model, out, result.manifest, overwrite=args.overwrite)
    after = result.manifest["validation"].get("after", {}).get("all", {})
    before = result.manifest["validation"].get("before", {}).get("all", {})
    print(json.dumps({
        "model": str(out), "name": name, "base": args.base, "stopped": result.stopped,
        "steps": result.manifest["training"]["steps_taken"],
        "seconds": result.manifest["training"]["seconds"],
        "val_click_iou_before": before.get("mode1_first"),
        "val_click_iou_after": after.get("mode1_first"),
        "val_box_iou_before": before.get("mode3_first"),
        "val_box_iou_after": after.get("mode3_first"),
        "box_decoder": result.manifest.get("box_decoder"),
    }))
    return 0
