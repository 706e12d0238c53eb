"""A benchmark run folder built from real ultrasound images and their ground truth.

The "predictions" are the ground truth eroded, dilated, halved or joined by a spurious blob,
so every metric in the rows is computed from the masks written: tables and figure titles can
be checked against hand computations without running a model. Used by the report tests and
the Benchmark dock's figure-tab test (loaded by path: the tests are not a package).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
US = DATA / "png_pairs" / "fetal_head_us"
CASES = ("006_HC", "033_HC", "060_HC", "088_HC")


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


def _dice(a, b):
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _write(path: Path, array: np.ndarray) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"{path}: could not write the PNG")
    return path


def available() -> bool:
    return all((US / "images" / f"{c}.png").is_file() for c in CASES)


def build_run(out: Path) -> Path:
    """Write ``results.csv`` and the masks of the constructed run into ``out``; returns it."""
    import cv2

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    for ci, case in enumerate(CASES):
        image, label = US / "images" / f"{case}.png", US / "masks" / f"{case}.png"
        gt = cv2.imread(str(label), cv2.IMREAD_GRAYSCALE) > 127
        h, w = gt.shape
        ys, xs = np.nonzero(gt)
        cx, cy = int(xs.mean()), int(ys.mean())
        base = dict(dataset="fetal_head_us", task="fetal_head_us", label=1, case=case,
                    slice=0, repeat=0, hd95_mm=np.nan, nsd=np.nan, seconds=0.5,
                    prompt_supported=True, note="", boxes="[]", image_path=str(image),
                    label_path=str(label), height=h, width=w, candidate_scores="",
                    candidates_file="", size_fraction=float(gt.mean()),
                    boundary_complexity=1.0 + 0.1 * ci, curvature=0.01 * (ci + 1),
                    contrast=2.0 - 0.3 * ci, n_components=1, mask_file="")
        # iterative: a prediction eroded less with each click (click 3 is a negative click)
        pts = []
        for method, slack in (("sam_like", 0), ("region_growing", 2)):
            pts = [[cx, cy, 1]]
            for k in range(1, 5):
                if k == 2:
                    pts.append([int(xs.min()) + 3, cy, 1])
                elif k == 3:
                    pts.append([min(w - 1, int(xs.max()) + 20), cy, 0])
                elif k == 4:
                    pts.append([cx, int(ys.min()) + 3, 1])
                pred = cv2.erode(gt.astype(np.uint8), kernel, iterations=(5 - k) * 2 + slack
                                 + ci) > 0
                rel = f"masks/it/{method}_{case}_c{k}.png"
                _write(out / rel, pred.astype(np.uint8) * 255)
                rows.append({**base, "method": method, "protocol": "paper", "click": k,
                             "selection": "first", "iou": _iou(pred, gt),
                             "dice": _dice(pred, gt), "points": json.dumps(pts),
                             "mask_file": rel})
        # mode 1 with three candidates: the truth, dilated, the left half
        half = gt.copy()
        half[:, cx:] = False
        cands = [cv2.dilate(gt.astype(np.uint8), kernel, iterations=4) > 0, gt, half]
        files = []
        for k, c in enumerate(cands):
            rel = f"masks/cands/{case}_k{k}.png"
            _write(out / rel, c.astype(np.uint8) * 255)
            files.append(rel)
        scores = [0.71, 0.93 - 0.01 * ci, None]  # the third has a NaN predicted IoU
        for method in ("sam_like", "region_growing"):
            first = cands[1] if method == "sam_like" else cands[0]
            rows.append({**base, "method": method, "protocol": "mode1", "click": 0,
                         "selection": "first", "iou": _iou(first, gt), "dice": _dice(first, gt),
                         "points": json.dumps([[cx, cy, 1]]),
                         "candidate_scores": json.dumps(scores) if method == "sam_like"
                         else "", "candidates_file": json.dumps(files)
                         if method == "sam_like" else ""})
        # COSMOS centroid with 3 jittered repeats: IoU drops with the repeat number
        for r in range(3):
            pred = cv2.erode(gt.astype(np.uint8), kernel, iterations=2 * r * (ci + 1)) > 0
            rows.append({**base, "method": "sam_like", "protocol": "cosmos-centroid",
                         "click": 0, "repeat": r, "selection": "first", "iou": _iou(pred, gt),
                         "dice": _dice(pred, gt), "points": json.dumps([[cx, cy, 1]])})
        # everything mode at 16, 32, 64: the head (eroded less with a denser grid) + a blob
        for g, it in ((16, 6), (32, 3), (64, 1)):
            head = cv2.erode(gt.astype(np.uint8), kernel, iterations=it) > 0
            lab = np.zeros(gt.shape, np.uint16)
            lab[head] = 1
            n_pred = 1
            if g >= 32:
                lab[5:25, 5:25] = 2
                n_pred = 2
            rel = f"masks/every/{case}_g{g}.png"
            _write(out / rel, lab)
            iou, dice = _iou(head, gt), _dice(head, gt)
            matched = int(iou >= 0.5)
            for sel in ("match_dice", "match_iou", "hungarian"):
                hung = sel == "hungarian"
                rows.append({**base, "method": "sam_like", "protocol": f"everything{g}",
                             "click": 0, "selection": sel, "iou": iou, "dice": dice,
                             "points": "[]", "mask_file": rel, "n_pred": n_pred,
                             "matched": matched if hung else 1,
                             "precision": matched / n_pred if hung else np.nan,
                             "recall": matched / 1 if hung else np.nan,
                             "f1": (2 * matched / (n_pred + 1)) if hung else np.nan,
                             "seconds": 2.0 * g / 16})
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    # how a run describes its methods: the SAM-family adapter and a classical method
    manifest = {"status": "complete", "options": {"data": str(US), "clicks": 4},
                "methods": {"sam_like": {"class": "app.core.methods.sam_family.SamFamilyMethod",
                                         "model": "sam_like"},
                            "region_growing": {"class": "app.core.methods.classical."
                                               "RegionGrowing"}}}
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out
