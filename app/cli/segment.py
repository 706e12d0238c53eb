"""``samscope segment``: segment one 2D image, or one slice of a volume, from the command line.

Example::

    samscope segment us.png --box 270 60 585 430 --output head.png

Coordinates are image pixels: x = column, y = row, box corners inclusive (x1 is the last column
of the object). One JSON line per candidate goes to stdout: its index, predicted IoU, area in
pixels and whether it was the one written.
"""

from __future__ import annotations

import argparse
import json
import sys

from app.core.models.backends import BACKENDS

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment one image (or one slice) from box/point prompts",
        description="Segment one 2D image (PNG, JPEG, TIFF, BMP; 8- or 16-bit; DICOM) or one "
        "slice of a volume (DICOM series, NIfTI, NRRD) with a promptable model. Coordinates "
        "are image pixels, x = column, y = row; box corners are inclusive.")
    p.add_argument("image", help="image file or DICOM folder")
    p.add_argument("--model", default="litemedsam",
                   help="model name from `samscope models` (default: litemedsam, bundled)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="weights file to use instead of the model's own (e.g. fine-tuned)")
    p.add_argument("--box", nargs=4, type=float, action="append", metavar=("X0", "Y0", "X1", "Y1"),
                   help="box prompt, inclusive corners; repeat for several objects")
    p.add_argument("--point", nargs=3, type=float, action="append", metavar=("X", "Y", "LABEL"),
                   help="point prompt; LABEL 1 = object, 0 = background; repeatable")
    p.add_argument("--slice", type=int, metavar="K",
                   help="slice index (0-based, along the first array axis) of a volume")
    p.add_argument("--output", "-o", required=True, metavar="OUT",
                   help="mask to write: .png (0/255), or .nii.gz/.nii/.dcm for a volume slice")
    p.add_argument("--candidate", type=int, metavar="N",
                   help="which candidate to write (default: highest predicted IoU)")
    p.add_argument("--single", action="store_true",
                   help="ask for one mask instead of the three multimask candidates")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: best available)")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="how the networks run: auto (the default, or $SAMSCOPE_BACKEND: "
                   "exported graphs on CPU, OpenVINO's encoder + ONNX Runtime's click graphs when "
                   "both are installed; torch on GPUs), torch, onnx, openvino, openvino+onnx")
    p.add_argument("--download", action="store_true",
                   help="download the model's checkpoint when it is not cached")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def _prompt_args(args):
    import numpy as np

    boxes = np.asarray(args.box or [], np.float32).reshape(-1, 4)
    points = np.asarray(args.point or [], np.float32).reshape(-1, 3)
    if len(boxes) == 0 and len(points) == 0:
        raise ValueError("give at least one --box X0 Y0 X1 Y1 or --point X Y LABEL")
    if len(points) and not np.isin(points[:, 2], (0, 1)).all():
        raise ValueError(f"point labels must be 1 (object) or 0 (background); got "
                         f"{sorted(set(points[:, 2].tolist()))}")
    if len(boxes) > 1 and len(points):
        raise ValueError("several boxes cannot be combined with points: give one box, or "
                         "boxes only")
    for name, arr in (("box", boxes), ("point", points)):
        for v in arr:
            if not np.isfinite(v).all():
                raise ValueError(f"--{name} {' '.join(f'{x:g}' for x in v)}: coordinates must "
                                 "be finite numbers (no nan or inf)")
    for b in boxes:
        if b[2] < b[0] or b[3] < b[1]:
            raise ValueError(f"box {b.tolist()} is not X0 Y0 X1 Y1 with X0 <= X1 and Y0 <= Y1")
    return boxes, points


def _select_slice(volume, k):
    if volume.n_slices == 1:
        if k not in (None, 0):
            raise ValueError(f"{volume.source}: a 2D image has only slice 0, not {k}")
        return 0
    if k is None:
        raise ValueError(f"{volume.source} has {volume.n_slices} slices; choose one with "
                         f"--slice K (0..{volume.n_slices - 1})")
    if not 0 <= k < volume.n_slices:
        raise ValueError(f"--slice {k} is outside 0..{volume.n_slices - 1} of {volume.source}")
    return k


def _write(out_path, mask, volume, k, overwrite):
    import numpy as np

    from app.core.io import write_labels

    labels = mask.astype(np.uint8)
    if str(out_path).lower().endswith(".png"):
        reference = volume if volume.n_slices == 1 else volume.with_pixels(
            volume.pixels[k:k + 1], meta={})
        return write_labels(out_path, labels[None], reference, overwrite=overwrite)
    full = np.zeros(volume.shape, np.uint8)
    full[k] = labels
    return write_labels(out_path, full, volume, overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from app.core.engine import Engine
    from app.core.errors import WriteError
    from app.core.io import read_image
    from app.core.io._atomic import check_output_path, full_suffix
    from app.core.models.base import Prompt
    from app.core.models.registry import get_spec, load_model

    get_spec(args.model)  # unknown names fail before anything is read
    boxes, points = _prompt_args(args)
    # the output is checked before the model runs: folder, permissions, existing file, format
    check_output_path(args.output, overwrite=args.overwrite, protected=[args.image])
    suffix = full_suffix(args.output)
    if suffix not in (".png", ".nii", ".nii.gz", ".dcm"):
        raise WriteError(f"{args.output}: unknown mask format {suffix or '(no extension)'}; "
                         "use .png, .nii.gz, .nii or .dcm")
    volume = read_image(args.image)
    if suffix == ".dcm" and volume.meta.get("format") != "dicom":
        raise WriteError(f"{args.output}: DICOM SEG needs a DICOM source; {args.image} is "
                         f"{volume.meta.get('format') or 'not DICOM'} (write .nii.gz or .png)")
    k = _select_slice(volume, args.slice)
    image = volume.slice(k)
    for b in boxes:
        Prompt.from_box(b).validate_for(image.shape)
    if len(points):
        Prompt.from_points(points[:, :2], points[:, 2].astype(np.int32)).validate_for(image.shape)

    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device,
                       download=args.download, backend=args.backend)
    engine = Engine(model)
    if len(boxes) > 1:
        cands = engine.predict_boxes(image, boxes)
        chosen = np.arange(len(cands))  # one mask per box: write their union
    else:
        prompt = Prompt(
            points_xy=points[:, :2] if len(points) else np.zeros((0, 2), np.float32),
            point_labels=points[:, 2].astype(np.int32) if len(points) else np.zeros(0, np.int32),
            box_xyxy=boxes[0] if len(boxes) else None,
        )
        cands = engine.predict(image, prompt, multimask=not args.single)
        index = cands.best_index if args.candidate is None else args.candidate
        if not 0 <= index < len(cands):
            raise ValueError(f"--candidate {index} is outside 0..{len(cands) - 1} "
                             f"({len(cands)} candidates)")
        chosen = np.array([index])
    mask = cands.masks[chosen].any(axis=0)
    written = _write(args.output, mask, volume, k, args.overwrite)
    for i in range(len(cands)):
        line = {
            "index": i,
            "predicted_iou": round(float(cands.scores[i]), 4)
            if np.isfinite(cands.scores[i]) else None,
            "area_px": int(cands.masks[i].sum()),
            "selected": bool(i in chosen),
        }
        if len(boxes) > 1:
            line["box_xyxy"] = [float(v) for v in boxes[i]]
        print(json.dumps(line))
    print(f"wrote {written} ({int(mask.sum())} pixels, model {args.model}, slice {k})",
          file=sys.stderr)
    return 0
