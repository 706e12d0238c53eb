"""Measure the engine with the bundled LiteMedSAM on real slices; prints figures, asserts nothing.

    python bench/engine.py [--data ../shared/data] [--images 3] [--prompts 20] [--threads N]

Reports, on the machine it runs on:

* image-encoder time per slice (first visit), and the time of a revisit served by the cache
  (the ratio is the point of the cache);
* decoder time per prompt, p50/p95, for box, box + point + previous logits, and point prompts;
* the embedding-cache hit rate over a second pass on the same slices (a user going back);
* peak memory: process RSS (ru_maxrss) and, on CUDA, torch's peak allocation.

The last line is one JSON object with every figure, for notes and reports.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil is usually there
        return float("nan")


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _slices(data: Path, n: int):
    """``n`` fetal-head US and ``n`` CXR images, evenly spaced by name, plus one CT slice."""
    from app.core.io import read_image, read_labels

    out = []
    for folder in ("fetal_head_us", "cxr_lungs"):
        names = sorted((data / "png_pairs" / folder / "images").iterdir())
        for path in [names[i] for i in np.linspace(0, len(names) - 1, n).astype(int)]:
            vol = read_image(path)
            gt = read_labels((data / "png_pairs" / folder / "masks" / path.name).with_suffix(".png"),
                             reference=vol)[0] > 0
            out.append((f"{folder}/{path.name}", vol.slice(0), gt))
    ct_dir = data / "dicom/ct_3slice"
    if ct_dir.is_dir():
        vol = read_image(ct_dir / "ct")
        liver = read_labels(ct_dir / "nifti/liver.nii.gz", reference=vol)
        out.append(("ct_3slice/slice1 (liver)", vol.slice(1), liver[1] > 0))
    return out


def _pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--images", type=int, default=3, help="images per 2D data set (default 3)")
    ap.add_argument("--prompts", type=int, default=20, help="prompts per image and kind")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: cores - 1, as the app does)")
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)

    import torch

    from app.core.coords import mask_to_box_xyxy
    from app.core.engine import Engine
    from app.core.models.base import Prompt
    from app.core.models.registry import load_model

    rng = np.random.default_rng(0)
    rss0 = _rss_mb()
    t = time.perf_counter()
    model = load_model("litemedsam", device=args.device)
    t_load = time.perf_counter() - t
    engine = Engine(model, n_threads=args.threads)
    slices = _slices(args.data, args.images)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"device {model.device}")
    print(f"model load: {t_load:.2f} s; RSS {rss0:.0f} -> {_rss_mb():.0f} MiB")

    embed_s, revisit_s, decode = [], [], {"box": [], "box+point+logits": [], "point": []}
    ious = []
    for name, image, gt in slices:
        t = time.perf_counter()
        emb = engine.embed(image)
        embed_s.append(time.perf_counter() - t)
        box = mask_to_box_xyxy(gt)
        ys, xs = np.nonzero(gt)
        h, w = image.shape
        first = engine.predict(emb, Prompt.from_box(box))
        ious.append(float((first.masks[0] & gt).sum() / (first.masks[0] | gt).sum()))
        for _ in range(args.prompts):
            jitter = rng.normal(0, 0.05, 4) * np.r_[box[2] - box[0], box[3] - box[1]].repeat(2)
            jb = np.clip(box + jitter, 0, [w - 1, h - 1, w - 1, h - 1])
            jb = np.r_[np.minimum(jb[:2], jb[2:]), np.maximum(jb[:2], jb[2:])]
            i = rng.integers(len(xs))
            pt = [[xs[i], ys[i]]]
            for kind, prompt in (
                ("box", Prompt.from_box(jb)),
                ("box+point+logits", Prompt(box_xyxy=jb, points_xy=pt, point_labels=[1],
                                            mask_logits=first.low_res_logits[0])),
                ("point", Prompt.from_points(pt)),
            ):
                t = time.perf_counter()
                engine.predict(emb, prompt)
                decode[kind].append(time.perf_counter() - t)
        print(f"  {name:48s} {image.shape[1]}x{image.shape[0]}  embed {embed_s[-1]:.2f} s  "
              f"tight-box IoU {ious[-1]:.3f}")

    # second pass: the user goes back through the same slices
    for _name, image, _gt in slices:
        t = time.perf_counter()
        engine.embed(image)
        revisit_s.append(time.perf_counter() - t)
    stats = engine.stats

    print(f"embedding (first visit): median {np.median(embed_s):.2f} s, "
          f"min {min(embed_s):.2f}, max {max(embed_s):.2f} over {len(embed_s)} slices")
    print(f"revisit from cache: median {np.median(revisit_s) * 1000:.1f} ms "
          f"(x{np.median(embed_s) / max(np.median(revisit_s), 1e-9):.0f} faster; the key is a "
          f"SHA-256 of the pixels)")
    for kind, values in decode.items():
        print(f"decode {kind:18s}: p50 {_pct(values, 50):.1f} ms, p95 {_pct(values, 95):.1f} ms "
              f"({len(values)} prompts)")
    print(f"cache: {stats.embeddings_computed} computed, {stats.embeddings_reused} reused, "
          f"hit rate over both passes {stats.hit_rate:.2f}, {stats.cache_bytes / 2**20:.0f} MiB "
          f"held for {stats.cache_entries} slices")
    peak_cuda = (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None
    print(f"peak RSS {_peak_rss_mb():.0f} MiB" + (
        f", peak CUDA allocation {peak_cuda:.0f} MiB" if peak_cuda is not None else ""))
    print(json.dumps({
        "device": model.device, "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
        "model_load_s": round(t_load, 3),
        "embed_s": {"median": round(float(np.median(embed_s)), 3),
                    "min": round(min(embed_s), 3), "max": round(max(embed_s), 3),
                    "n": len(embed_s)},
        "revisit_ms_median": round(float(np.median(revisit_s)) * 1000, 2),
        "decode_ms": {k: {"p50": round(_pct(v, 50), 1), "p95": round(_pct(v, 95), 1),
                          "n": len(v)} for k, v in decode.items()},
        "cache_hit_rate": round(stats.hit_rate, 3),
        "peak_rss_mib": round(_peak_rss_mb()), "peak_cuda_mib": peak_cuda,
        "tight_box_iou": {name: round(v, 3) for (name, _, _), v in zip(slices, ious)},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
