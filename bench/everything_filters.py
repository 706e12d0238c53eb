"""Everything mode's two filters swept on real images: which ``pred_iou_thresh`` and
``stability_score_thresh`` keep the ground-truth objects for a model; prints figures, asserts
nothing. The measurement behind :data:`app.core.everything.MODEL_OPTIONS`.

    python bench/everything_filters.py [--data ../shared/data]
        [--datasets fetal_head_us,cxr_lungs] [--images 2] [--grid 32]
        [--method litemedsam_points] [--iou 0.7,0.8,0.88] [--stability 0.8,0.9,0.95]

Each image is embedded and its grid decoded once; every pair of thresholds is then applied to
the same decoded masks. Per pair it prints, over all images and ground-truth objects: the
COSMOS match Dice (best Dice per object; 0 when nothing is kept), objects found (a Hungarian
pair at IoU >= 0.5), images with no mask kept, and the mean number of masks kept. The other
filters are the model's defaults (:func:`app.core.everything.options_for`). The last line is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--datasets", default="fetal_head_us,cxr_lungs")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--method", default="litemedsam_points")
    ap.add_argument("--iou", default="0.7,0.8,0.88")
    ap.add_argument("--stability", default="0.8,0.9,0.95")
    args = ap.parse_args(argv)

    from everything import _Memo, _samples  # bench/everything.py

    from app.core.benchmark.matching import match_objects
    from app.core.engine import Engine
    from app.core.everything import generate_masks, options_for
    from app.core.models.registry import load_model

    model = load_model(args.method, device="cpu")
    engine = Engine(model)
    base = options_for(args.method)
    pairs = list(itertools.product([float(v) for v in args.iou.split(",")],
                                   [float(v) for v in args.stability.split(",")]))
    print(f"[setup] {args.method}, grid {args.grid}, other filters {base}, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    per_pair: dict = {p: {"dice": [], "found": [], "n_pred": [], "empty": 0} for p in pairs}
    images = []
    for ds_name, s in _samples(Path(args.data), args.datasets.split(","), args.images):
        t = time.perf_counter()
        emb = engine.embed(s.image)
        memo = _Memo(model)
        for p in pairs:
            res = generate_masks(memo, emb, args.grid, {**base, "pred_iou_thresh": p[0],
                                                         "stability_score_thresh": p[1]})
            m = match_objects(res.masks, s.masks)
            d = per_pair[p]
            d["dice"] += [v.dice for v in m["match_dice"].values()]
            d["found"] += [v.matched for v in m["hungarian"].values()]
            d["n_pred"].append(len(res))
            d["empty"] += len(res) == 0
        images.append({"dataset": ds_name, "case": s.case_id,
                       "seconds": round(time.perf_counter() - t, 1)})
        print(f"[image] {images[-1]}", flush=True)
    out = {"method": args.method, "grid": args.grid, "images": images, "pairs": []}
    for p, d in per_pair.items():
        line = {"pred_iou_thresh": p[0], "stability_score_thresh": p[1],
                "match_dice_mean": round(float(np.mean(d["dice"])), 3),
                "objects_found": f"{sum(d['found'])}/{len(d['found'])}",
                "images_without_masks": f"{d['empty']}/{len(images)}",
                "n_pred_mean": round(float(np.mean(d["n_pred"])), 1)}
        out["pairs"].append(line)
        print(f"[pair] {line}", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
