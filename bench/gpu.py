"""The batched GPU path, measured: images/s and prompts/s by batch size and precision.

    python bench/gpu.py [--model litemedsam] [--data ../shared/data] [--seconds 3]

For what a session lent a GPU runs (a few minutes in all). Against torch fp32 in the same run:

* image encoder, batches of 1..32 images (the benchmark knows its images in advance), in fp32,
  fp16 and bf16 autocast: images/s, speed-up, and how far the half-precision embeddings move
  the masks (IoU of the decoded tight-box mask against fp32's, minimum over the images);
* prompt encoder + mask decoder, many box prompts on one embedding with the multimask head
  (1..256 prompts per call): prompts/s and the same mask agreement;
* peak CUDA memory per configuration.

Without a CUDA GPU it says so and exits with status 0. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRECISIONS = ("fp32", "fp16", "bf16")


def _images(data: Path, n: int):
    """``n`` real 2D images (fetal head US, CXR) with a ground-truth box; random if absent."""
    from app.core.image import Image2D

    out = []
    try:
        from app.core.coords import mask_to_box_xyxy
        from app.core.io import read_image, read_labels

        for folder in ("fetal_head_us", "cxr_lungs"):
            d = data / "png_pairs" / folder
            for path in sorted((d / "images").iterdir())[: (n + 1) // 2]:
                vol = read_image(path)
                gt = read_labels((d / "masks" / path.name).with_suffix(".png"),
                                 reference=vol)[0] > 0
                out.append((vol.slice(0), mask_to_box_xyxy(gt)))
    except (OSError, StopIteration):
        out = []
    rng = np.random.default_rng(0)
    while len(out) < n:
        out.append((Image2D.from_array(rng.integers(0, 255, (512, 512), dtype=np.uint8)),
                    np.array([100, 120, 400, 380], np.float32)))
    return out[:n]


def _timeit(fn, seconds: float, sync) -> float:
    """Seconds per call: warm up twice, then repeat for about ``seconds``."""
    fn()
    fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync()
        if time.perf_counter() - t0 >= seconds and n >= 3:
            return (time.perf_counter() - t0) / n


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = (a | b).sum()
    return 1.0 if u == 0 else float((a & b).sum() / u)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--seconds", type=float, default=3.0, help="timing per configuration")
    ap.add_argument("--image-batches", default="1,2,4,8,16,32")
    ap.add_argument("--prompt-batches", default="1,8,32,64,128,256")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the code path on the CPU in fp32 (checks the script, not speed)")
    args = ap.parse_args(argv)

    import torch

    smoke = args.cpu_smoke
    if not torch.cuda.is_available() and not smoke:
        print("bench/gpu.py: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "nothing to measure. Run it on a GPU machine.")
        print(json.dumps({"gpu": None}))
        return 0

    from app.core.models.registry import load_model

    dev = "cpu" if smoke else "cuda"
    sync = (lambda: None) if smoke else torch.cuda.synchronize
    precisions = ("fp32",) if smoke else PRECISIONS
    cuda = not smoke

    def reset_peak():
        if cuda:
            reset_peak()

    def peak_mib():
        return round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None

    model = load_model(args.model, device=dev, precision="fp32", backend="torch")
    net, pre = model.net, model.preprocessing
    name = torch.cuda.get_device_name(0) if cuda else "cpu (smoke test)"
    print(f"GPU {name}, torch {torch.__version__}, model {args.model}, "
          f"bf16 supported: {cuda and torch.cuda.is_bf16_supported()}")
    img_batches = [int(b) for b in args.image_batches.split(",")]
    cases = _images(args.data, max(img_batches))
    inputs = torch.stack([torch.from_numpy(pre.prepare(im)[0]) for im, _ in cases]).to(dev)
    report = {"gpu": name, "torch": torch.__version__, "model": args.model,
              "encoder": [], "decoder": []}

    def autocast(p):
        if p == "fp32":
            return torch.autocast(dev, enabled=False)
        return torch.autocast("cuda", dtype=torch.float16 if p == "fp16" else torch.bfloat16)

    def decode(features, boxes_m, p, multimask=True):
        n = len(boxes_m)
        with torch.inference_mode(), autocast(p):
            sparse, dense = net.prompt_encoder(points=None, boxes=boxes_m, masks=None)
            low, iou = net.mask_decoder(
                image_embeddings=features, image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense.expand(n, -1,
                                                                                      -1, -1),
                multimask_output=multimask)
        return low.float(), iou.float()

    # --- image encoder: fp32 reference features and masks -----------------------------------
    with torch.inference_mode():
        ref_feats = torch.cat([net.image_encoder(inputs[i:i + 1]).float()
                               for i in range(len(cases))])

    def masks_of(feats):
        out = []
        for i, (im, box) in enumerate(cases):
            bm = torch.from_numpy(pre.boxes_to_model(box[None], im.shape)).to(dev)
            low, _ = decode(feats[i:i + 1], bm, "fp32", multimask=False)
            res = pre.resized_size(im.shape)
            out.append(pre.logits_to_masks(low[:, 0].cpu().numpy(), res, im.shape)[0])
        return out

    ref_masks = masks_of(ref_feats)
    base_ips = None
    for p in precisions:
        if p == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        with torch.inference_mode(), autocast(p):
            feats = torch.cat([net.image_encoder(inputs[i:i + 1]).float()
                               for i in range(len(cases))])
        agree = min(_iou(a, b) for a, b in zip(ref_masks, masks_of(feats)))
        for bs in img_batches:
            x = inputs[:bs]
            reset_peak()

            def run(x=x, p=p):
                with torch.inference_mode(), autocast(p):
                    net.image_encoder(x)

            try:
                sec = _timeit(run, args.seconds, sync)
            except torch.OutOfMemoryError:
                print(f"encoder {p} batch {bs}: out of memory")
                torch.cuda.empty_cache()
                break
            ips = bs / sec
            if p == "fp32" and bs == 1:
                base_ips = ips
            row = {"precision": p, "batch": bs, "images_per_s": round(ips, 2),
                   "vs_fp32_batch1": round(ips / base_ips, 2),
                   "mask_iou_min_vs_fp32": round(agree, 4),
                   "peak_mib": peak_mib()}
            report["encoder"].append(row)
            print(f"encoder {p:4s} batch {bs:3d}: {ips:8.1f} images/s  x{row['vs_fp32_batch1']:.2f}"
                  f"  mask IoU vs fp32 >= {agree:.4f}  peak {row['peak_mib']} MiB")

    # --- prompt encoder + mask decoder: many boxes on one embedding, multimask head ---------
    im, box = cases[0]
    rng = np.random.default_rng(0)
    prompt_batches = [int(b) for b in args.prompt_batches.split(",")]
    nmax = max(prompt_batches)
    w = np.r_[box[2] - box[0], box[3] - box[1]].repeat(2)
    boxes = np.clip(box + rng.normal(0, 0.05, (nmax, 4)) * w, 0,
                    [im.shape[1] - 1, im.shape[0] - 1] * 2).astype(np.float32)
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                            np.maximum(boxes[:, :2], boxes[:, 2:])], axis=1)
    bm_all = torch.from_numpy(pre.boxes_to_model(boxes, im.shape)).to(dev)
    feats = ref_feats[:1]
    ref_low, _ = decode(feats, bm_all[:32], "fp32")
    ref_m = (ref_low > 0).cpu().numpy()
    base_pps = None
    for p in precisions:
        if p == "bf16" and not torch.cuda.is_bf16_supported():
            continue
        low, _ = decode(feats, bm_all[:32], p)
        got = (low > 0).cpu().numpy()
        agree = min(_iou(a, b) for a, b in zip(ref_m.reshape(-1, 256, 256),
                                               got.reshape(-1, 256, 256)))
        for n in prompt_batches:
            bm = bm_all[:n]
            reset_peak()
            try:
                sec = _timeit(lambda bm=bm, p=p: decode(feats, bm, p), args.seconds, sync)
            except torch.OutOfMemoryError:
                print(f"decoder {p} {n} prompts: out of memory")
                torch.cuda.empty_cache()
                break
            pps = n / sec
            if p == "fp32" and n == 1:
                base_pps = pps
            row = {"precision": p, "prompts": n, "prompts_per_s": round(pps, 1),
                   "vs_fp32_single": round(pps / base_pps, 2),
                   "lowres_mask_iou_min_vs_fp32": round(agree, 4),
                   "peak_mib": peak_mib()}
            report["decoder"].append(row)
            print(f"decoder {p:4s} {n:4d} prompts/call: {pps:9.1f} prompts/s  "
                  f"x{row['vs_fp32_single']:.2f}  low-res mask IoU vs fp32 >= {agree:.4f}")

    # --- the engine's own path for comparison: one call per prompt, full-res masks ----------
    from app.core.engine import Engine
    from app.core.models.base import Prompt

    engine = Engine(model, store=False)
    emb = engine.embed(im)
    sec = _timeit(lambda: engine.predict(emb, Prompt.from_box(boxes[0])), args.seconds, sync)
    report["engine_predict_prompts_per_s"] = round(1 / sec, 1)
    sec = _timeit(lambda: engine.predict_boxes(emb, boxes[:32]), args.seconds, sync)
    report["engine_predict_boxes32_prompts_per_s"] = round(32 / sec, 1)
    print(f"Engine.predict (one prompt, full-res masks): {report['engine_predict_prompts_per_s']}"
          f" prompts/s; Engine.predict_boxes(32): "
          f"{report['engine_predict_boxes32_prompts_per_s']} prompts/s")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
