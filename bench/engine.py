"""Measure the engine with the bundled LiteMedSAM on real slices; prints figures, asserts nothing.

    python bench/engine.py [--data ../shared/data] [--images 3] [--prompts 20] [--threads N]
                           [--backends torch,onnx,openvino,openvino+onnx] [--model litemedsam]

Reports, on the machine it runs on, for each backend (torch and the exported ONNX graphs by
default), interleaved slice by slice so that ratios are measured in the same run:

* image-encoder time per slice (first visit), and the time of a revisit served by the cache
  (the ratio is the point of the cache);
* decoder network time (prompt encoder + mask decoder) per prompt, p50/p95, and the whole
  click (prompt in, full-resolution masks out, what ``Engine.predict`` costs), for box,
  box + point + previous logits, and point prompts;
* the speed-up of each backend over the first, and how far their masks agree;
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
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--backends", default="torch,onnx,openvino,openvino+onnx",
                    help="comma-separated backends, compared in one interleaved run")
    args = ap.parse_args(argv)

    import torch

    from app.core.coords import mask_to_box_xyxy
    from app.core.engine import Engine
    from app.core.models.base import Prompt
    from app.core.models.registry import load_model

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    rss0 = _rss_mb()
    models, engines, t_load, decode_net = {}, {}, {}, {}
    for b in backends:
        t = time.perf_counter()
        models[b] = load_model(args.model, device=args.device, backend=b,
                               on_status=lambda m: print("  " + m))
        t_load[b] = time.perf_counter() - t
        engines[b] = Engine(models[b], n_threads=args.threads, store=False)
        decode_net[b] = _time_decoder_network(models[b])
    slices = _slices(args.data, args.images)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"device {models[backends[0]].device}, model {args.model}")
    print("model load: " + ", ".join(f"{b} {t_load[b]:.2f} s" for b in backends)
          + f"; RSS {rss0:.0f} -> {_rss_mb():.0f} MiB")
    # first use exports the graphs (once per weights digest) and warms each backend up
    warm = slices[0][1]
    for b in backends:
        t = time.perf_counter()
        e = engines[b].embed(warm)
        engines[b].predict(e, Prompt.from_box([0, 0, 10, 10]))
        print(f"first use ({b}): {time.perf_counter() - t:.2f} s (export or find graphs, warm-up)")
        engines[b].clear_cache()
        decode_net[b].clear()

    kinds = ("box", "box+point+logits", "point")
    embed_s = {b: [] for b in backends}
    revisit_s = {b: [] for b in backends}
    click = {b: {k: [] for k in kinds} for b in backends}
    ious = {b: [] for b in backends}
    agree = []
    for name, image, gt in slices:
        embs = {}
        for b in backends:  # interleaved, so that load drifting on the machine hits both
            t = time.perf_counter()
            embs[b] = engines[b].embed(image)
            embed_s[b].append(time.perf_counter() - t)
        box = mask_to_box_xyxy(gt)
        ys, xs = np.nonzero(gt)
        h, w = image.shape
        firsts = {}
        for b in backends:
            firsts[b] = engines[b].predict(embs[b], Prompt.from_box(box))
            m = firsts[b].masks[0]
            ious[b].append(float((m & gt).sum() / (m | gt).sum()))
        ref = firsts[backends[0]].masks[0]
        for b in backends[1:]:
            m = firsts[b].masks[0]
            agree.append(float((m & ref).sum() / max((m | ref).sum(), 1)))
        rng = np.random.default_rng(len(agree))
        for _ in range(args.prompts):
            jitter = rng.normal(0, 0.05, 4) * np.r_[box[2] - box[0], box[3] - box[1]].repeat(2)
            jb = np.clip(box + jitter, 0, [w - 1, h - 1, w - 1, h - 1])
            jb = np.r_[np.minimum(jb[:2], jb[2:]), np.maximum(jb[:2], jb[2:])]
            i = rng.integers(len(xs))
            pt = [[xs[i], ys[i]]]
            for kind in kinds:
                for b in backends:
                    prompt = {
                        "box": Prompt.from_box(jb),
                        "box+point+logits": Prompt(
                            box_xyxy=jb, points_xy=pt, point_labels=[1],
                            mask_logits=firsts[b].low_res_logits[0]),
                        "point": Prompt.from_points(pt),
                    }[kind]
                    decode_net[b].kind = kind
                    t = time.perf_counter()
                    engines[b].predict(embs[b], prompt)  # prompt in, full-resolution masks out
                    click[b][kind].append(time.perf_counter() - t)
        for b in backends:
            decode_net[b].kind = None
        print(f"  {name:40s} {image.shape[1]}x{image.shape[0]}  embed "
              + ", ".join(f"{b} {embed_s[b][-1]:.2f} s" for b in backends)
              + "  tight-box IoU " + ", ".join(f"{b} {ious[b][-1]:.3f}" for b in backends))

    for b in backends:  # second pass: the user goes back through the same slices
        for _name, image, _gt in slices:
            t = time.perf_counter()
            engines[b].embed(image)
            revisit_s[b].append(time.perf_counter() - t)

    base = backends[0]
    report = {"device": models[base].device, "torch_threads": torch.get_num_threads(),
              "cores": os.cpu_count(), "model": args.model, "backends": {}}
    for b in backends:
        net = decode_net[b].times
        r = {
            "model_load_s": round(t_load[b], 3),
            "embed_s": {"median": round(float(np.median(embed_s[b])), 3),
                        "min": round(min(embed_s[b]), 3), "max": round(max(embed_s[b]), 3),
                        "n": len(embed_s[b])},
            "revisit_ms_median": round(float(np.median(revisit_s[b])) * 1000, 2),
            "decoder_ms": {k: {"p50": round(_pct(v, 50), 1), "p95": round(_pct(v, 95), 1),
                               "n": len(v)} for k, v in net.items()},
            "click_ms": {k: {"p50": round(_pct(v, 50), 1), "p95": round(_pct(v, 95), 1),
                             "n": len(v)} for k, v in click[b].items()},
            "click_ms_all": {"p50": round(_pct(sum(click[b].values(), []), 50), 1),
                             "p95": round(_pct(sum(click[b].values(), []), 95), 1)},
            "tight_box_iou": [round(v, 3) for v in ious[b]],
        }
        report["backends"][b] = r
        print(f"[{b}] encoder per slice: median {r['embed_s']['median']:.2f} s "
              f"(min {r['embed_s']['min']:.2f}, max {r['embed_s']['max']:.2f}, "
              f"{len(embed_s[b])} slices); revisit from cache {r['revisit_ms_median']:.1f} ms")
        for k in kinds:
            d, c = r["decoder_ms"].get(k, {}), r["click_ms"][k]
            print(f"[{b}] {k:18s} decoder p50 {d.get('p50', float('nan')):6.1f} ms, p95 "
                  f"{d.get('p95', float('nan')):6.1f} ms | whole click p50 {c['p50']:6.1f} ms, "
                  f"p95 {c['p95']:6.1f} ms ({c['n']} prompts)")
    for b in backends[1:]:
        rb, r0 = report["backends"][b], report["backends"][base]
        ratio = {
            "encoder": r0["embed_s"]["median"] / rb["embed_s"]["median"],
            "click_p50": r0["click_ms_all"]["p50"] / rb["click_ms_all"]["p50"],
            "click_p95": r0["click_ms_all"]["p95"] / rb["click_ms_all"]["p95"],
            **{f"decoder_p50[{k}]": r0["decoder_ms"][k]["p50"] / rb["decoder_ms"][k]["p50"]
               for k in kinds if k in rb["decoder_ms"]},
        }
        report[f"speedup_{b}_vs_{base}"] = {k: round(v, 2) for k, v in ratio.items()}
        print(f"{b} vs {base} (same run): encoder x{ratio['encoder']:.2f}, whole click p50 "
              f"x{ratio['click_p50']:.2f} ({r0['click_ms_all']['p50']:.1f} -> "
              f"{rb['click_ms_all']['p50']:.1f} ms), p95 x{ratio['click_p95']:.2f}; "
              + ", ".join(f"{k} x{v:.2f}" for k, v in ratio.items() if k.startswith("decoder")))
    if agree:
        print(f"tight-box masks, {backends[1]} vs {base}: IoU min {min(agree):.4f}")
        report["mask_agreement_iou_min"] = round(min(agree), 5)
    peak_cuda = (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None
    print(f"peak RSS {_peak_rss_mb():.0f} MiB" + (
        f", peak CUDA allocation {peak_cuda:.0f} MiB" if peak_cuda is not None else ""))
    report.update(peak_rss_mib=round(_peak_rss_mb()), peak_cuda_mib=peak_cuda)
    print(json.dumps(report))
    return 0


class _time_decoder_network:
    """Wraps ``model._decode_net`` (prompt encoder + mask decoder only) to time each call."""

    def __init__(self, model) -> None:
        self.kind = None
        self.times: dict[str, list[float]] = {}
        for m in [model.__dict__.get("tuned"), model.__dict__.get("base")] or [model]:
            if m is None:
                continue
            self._wrap(m)
        if "tuned" not in model.__dict__:
            self._wrap(model)

    def _wrap(self, m) -> None:
        inner = m._decode_net

        def timed(*a, **kw):
            t = time.perf_counter()
            out = inner(*a, **kw)
            if self.kind is not None:
                self.times.setdefault(self.kind, []).append(time.perf_counter() - t)
            return out

        m._decode_net = timed

    def clear(self) -> None:
        self.times.clear()


if __name__ == "__main__":
    raise SystemExit(main())
