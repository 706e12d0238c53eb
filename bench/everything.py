"""Everything mode on real images: seconds per image per grid size, and how well the kept
masks match the ground truth; prints figures, asserts nothing.

    python bench/everything.py [--data ../shared/data] [--datasets fetal_head_us,cxr_lungs]
        [--images 2] [--grids 16,32,64] [--method litemedsam_points] [--backend onnx]
        [--option pred_iou_thresh=0.8 ...] [--decode-batches]

For each dataset (first ``--images`` 2D images in natural order; for a volume, its slice with
the largest ground-truth area) and each grid size it reports: seconds per image (embedding
apart), the masks left after each filter, and per task the COSMOS match Dice (best Dice per
ground-truth object), whether the object was found (a Hungarian pair at IoU >= 0.5), and n_pred
(masks kept). It prints the 1-minute load average before and after each measurement: the
machine is shared, and a busy CPU makes every figure slower.

``--decode-batches`` first times the decoder on single-point prompts one at a time and in
batches (torch), and one at a time in ONNX Runtime: the choice made in
``SamFamilyModel.decode_points``.

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _samples(data: Path, names: list[str] | None, n: int):
    from app.core.benchmark.datasets import discover, iter_images, natural_key

    for ds in discover(data).datasets:
        if names and ds.name not in names:
            continue
        labels = [t.label for t in ds.tasks]
        for ref in sorted(ds.cases, key=lambda c: natural_key(c.case))[:n]:
            imgs = list(iter_images(ref, labels))
            if not imgs:
                continue
            # a volume: its slice with the most ground truth
            yield ds.name, max(imgs, key=lambda s: sum(int(m.sum()) for m in s.masks.values()))


class _Memo:
    """The model with its ``decode_points`` remembered, so a second set of filters is
    measured on the same decoded masks without decoding again (not timed)."""

    def __init__(self, model) -> None:
        self.model = model
        self.cache: dict = {}

    def decode_points(self, emb, pts, multimask=True):
        key = (emb.key, pts.tobytes())
        if key not in self.cache:
            self.cache[key] = self.model.decode_points(emb, pts, multimask=multimask)
        return self.cache[key]

    def __getattr__(self, name):
        return getattr(self.model, name)


def _decode_batches(model, emb, out: dict) -> None:
    from app.core.everything import grid_points
    from app.core.models.backends import set_backend

    pts = grid_points(8, emb.original_size)[:48]
    for backend in ("torch", "onnx"):
        set_backend(model, backend)
        inner = getattr(model, "tuned", model)
        inner.decode_points(emb, pts[:2])  # warm up (and export on the first onnx call)
        t = time.perf_counter()
        for p in pts:
            inner.decode_points(emb, p[None])
        one = (time.perf_counter() - t) / len(pts)
        line = {"backend": backend, "one_at_a_time_ms": round(one * 1000, 1), "load": _load()}
        if backend == "torch":
            import torch

            for bs in (16, 48):
                feats = emb.features
                coords = inner.preprocessing.points_to_model(pts[:bs], emb.original_size)
                c = torch.from_numpy(coords[:, None, :])
                lab = torch.ones((bs, 1), dtype=torch.int64)
                t = time.perf_counter()
                with torch.inference_mode():
                    sparse, dense = inner.net.prompt_encoder(points=(c, lab), boxes=None,
                                                             masks=None)
                    inner.net.mask_decoder(image_embeddings=torch.as_tensor(feats),
                                           image_pe=inner._dense_pe(),
                                           sparse_prompt_embeddings=sparse,
                                           dense_prompt_embeddings=dense,
                                           multimask_output=True)
                line[f"batch{bs}_ms_per_point"] = round((time.perf_counter() - t) / bs * 1000, 1)
        print(f"[decode] {line}", flush=True)
        out.setdefault("decode", []).append(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--datasets", default=None)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--grids", default="16,32,64")
    ap.add_argument("--method", default="litemedsam_points")
    ap.add_argument("--backend", default=None, help="auto, torch, onnx (default: auto)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--decode-batches", action="store_true")
    args = ap.parse_args(argv)

    from app.core.benchmark.matching import match_objects
    from app.core.engine import Engine
    from app.core.everything import check_options, generate_masks
    from app.core.models.registry import load_model

    opts = check_options(dict(o.split("=", 1) for o in args.option))
    grids = [int(g) for g in args.grids.split(",")]
    model = load_model(args.method, device="cpu", backend=args.backend)
    engine = Engine(model)
    out: dict = {"method": args.method, "options": opts, "cpus": os.cpu_count(),
                 "threads": None, "images": []}
    try:
        import torch

        out["threads"] = torch.get_num_threads()
    except ImportError:
        pass
    print(f"[setup] {args.method}, options {opts}, load {_load()}", flush=True)
    names = args.datasets.split(",") if args.datasets else None
    first = True
    for ds_name, s in _samples(Path(args.data), names, args.images):
        t = time.perf_counter()
        emb = engine.embed(s.image)
        embed_s = time.perf_counter() - t
        if first and args.decode_batches:
            _decode_batches(model, emb, out)
            first = False
        for g in grids:
            load0 = _load()
            memo = _Memo(model)
            res = generate_masks(memo, emb, g, opts)
            m = match_objects(res.masks, s.masks)
            sam = generate_masks(memo, emb, g, None)  # SAM's defaults, same decodes
            msam = match_objects(sam.masks, s.masks)
            memo.cache.clear()
            rec = {"dataset": ds_name, "case": s.case_id, "shape": list(s.image.shape),
                   "grid": g, "seconds": round(res.seconds, 2),
                   "ms_per_point": round(res.seconds / res.n_prompts * 1000, 1),
                   "embed_seconds": round(embed_s, 2), "n_pred": len(res),
                   "filters": res.n_candidates,
                   "match_dice": {int(k): round(v.dice, 3) for k, v in m["match_dice"].items()},
                   "found": {int(k): v.matched for k, v in m["hungarian"].items()},
                   "sam_defaults": {"n_pred": len(sam), "match_dice": {
                       int(k): round(v.dice, 3) for k, v in msam["match_dice"].items()}},
                   "load_before": load0, "load_after": _load()}
            out["images"].append(rec)
            print(f"[image] {rec}", flush=True)
    # summary per dataset and grid
    summary = {}
    for r in out["images"]:
        key = f"{r['dataset']} grid {r['grid']}"
        d = summary.setdefault(key, {"images": 0, "seconds": [], "match_dice": [], "found": [],
                                     "n_pred": [], "sam_dice": [], "sam_n_pred": []})
        d["sam_dice"] += list(r["sam_defaults"]["match_dice"].values())
        d["sam_n_pred"].append(r["sam_defaults"]["n_pred"])
        d["images"] += 1
        d["seconds"].append(r["seconds"])
        d["match_dice"] += list(r["match_dice"].values())
        d["found"] += list(r["found"].values())
        d["n_pred"].append(r["n_pred"])
    for key, d in summary.items():
        line = {"images": d["images"], "seconds_per_image": round(float(np.mean(d["seconds"])), 1),
                "match_dice_mean": round(float(np.mean(d["match_dice"])), 3),
                "objects_found": f"{sum(d['found'])}/{len(d['found'])}",
                "n_pred_mean": round(float(np.mean(d["n_pred"])), 1),
                "sam_defaults_match_dice_mean": round(float(np.mean(d["sam_dice"])), 3),
                "sam_defaults_n_pred_mean": round(float(np.mean(d["sam_n_pred"])), 1)}
        summary[key] = line
        print(f"[summary] {key}: {line}", flush=True)
    out["summary"] = summary
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
