"""``samscope info PATH`` and ``samscope convert INPUT OUTPUT``: inspect and convert scans."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register", "run", "describe"]


def register(subparsers) -> None:
    info = subparsers.add_parser(
        "info",
        help="show what SAMScope reads from a scan (shape, spacing, modality, series, window)",
        description="Read a DICOM file/folder/DICOMDIR, NIfTI, NRRD or 2D picture and print its "
        "shape (z, y, x; or y, x for 2D pictures), spacing in mm in the same order, modality, "
        "DICOM series found and display window.",
    )
    info.add_argument("path", help="file or DICOM folder")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--series", help="DICOM SeriesInstanceUID or its number in the list")
    info.add_argument("--index", type=int, help="volume of a 4D NIfTI / frame of a cine")
    info.set_defaults(func=run)

    conv = subparsers.add_parser(
        "convert",
        help="convert a scan (e.g. DICOM series -> NIfTI) keeping its geometry",
        description="Convert INPUT to OUTPUT by OUTPUT's extension (.nii.gz, .nii, .nrrd, .png), "
        "keeping spacing, origin and orientation. With --reference, INPUT is a label map "
        "(PNG/NIfTI/NRRD/DICOM SEG) for the image REFERENCE and OUTPUT may also be .dcm "
        "(DICOM SEG, for DICOM references).",
    )
    conv.add_argument("input")
    conv.add_argument("output")
    conv.add_argument("--series", help="DICOM SeriesInstanceUID or its number in the list")
    conv.add_argument("--index", type=int, help="volume of a 4D NIfTI / frame of a cine")
    conv.add_argument("--reference", metavar="IMAGE", help="convert labels drawn on IMAGE")
    conv.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    conv.set_defaults(func=run)


def _series_arg(value: str | None) -> str | int | None:
    if value is None:
        return None
    return int(value) if value.isdigit() and len(value) < 6 else value


def _round(values, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]


def describe(volume, path: str) -> dict[str, Any]:
    """The ``info`` summary of a Volume as a JSON-friendly dict."""
    shape = list(volume.shape[1:] if volume.is_2d else volume.shape)
    spacing = _round(volume.spacing_mm[1:] if volume.is_2d else volume.spacing_mm)
    window = volume.window
    shown = volume.display_window()
    meta = volume.meta
    return {
        "path": path,
        "format": meta.get("format", ""),
        "shape": shape,
        "spacing_mm": spacing,
        "spacing_known": bool(volume.spacing_known),
        "is_2d": bool(volume.is_2d),
        "rgb": bool(volume.is_rgb),
        "dtype": str(volume.pixels.dtype),
        "modality": volume.modality,
        "origin_mm": _round(volume.origin_mm, 4),
        "direction": [_round(row, 6) for row in volume.direction],
        "window": None if window is None else {"center": window.center, "width": window.width},
        "display_window": {"center": shown.center, "width": shown.width, "name": shown.name},
        "value_range": [float(volume.pixels.min()), float(volume.pixels.max())],
        "series": meta.get("series_found", []),
        "series_read": meta.get("series_instance_uid"),
        "series_skipped": meta.get("series_skipped", []),
        "n_volumes": meta.get("n_volumes"),
    }


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (valid JSON)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars
        return _json_safe(value.item())
    return value


def _text(d: dict[str, Any]) -> str:
    def fmt(v) -> str:
        return "(" + ", ".join(f"{x:g}" for x in v) + ")"

    axes = "y, x" if d["is_2d"] else "z, y, x"
    lines = [
        f"path        {d['path']}",
        f"format      {d['format']}" + (f"  modality {d['modality']}" if d["modality"] else ""),
        f"shape       {fmt(d['shape'])}  ({axes}){'  RGB' if d['rgb'] else ''}  {d['dtype']}",
        f"spacing_mm  {fmt(d['spacing_mm'])}" + ("" if d["spacing_known"] else "  (unknown)"),
        f"origin_mm   {fmt(d['origin_mm'])}  (LPS)",
        f"values      {d['value_range'][0]:g} .. {d['value_range'][1]:g}",
    ]
    w = d["window"]
    sw = d["display_window"]
    lines.append(
        f"window      {w['center']:g}/{w['width']:g} (from the file)"
        if w
        else f"window      {sw['center']:g}/{sw['width']:g} ({sw['name']}; none in the file)"
    )
    if d["n_volumes"] and d["n_volumes"] > 1:
        lines.append(f"volumes     {d['n_volumes']} (use --index)")
    if d["series"]:
        lines.append(f"series      {len(d['series'])} found (the read one is marked *):")
        for k, s in enumerate(d["series"]):
            mark = "*" if s["uid"] == d["series_read"] else " "
            lines.append(
                f"  {mark} [{k}] {s['modality']:<6} {s['n_frames']:>4} frames "
                f"{s['rows']}x{s['columns']}  {s['description']!r}  {s['uid']}"
            )
    for s in d["series_skipped"]:
        lines.append(f"skipped     {s['uid']}: {s['error']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from app.core.io import read_image

    if args.command == "info":
        volume = read_image(args.path, series=_series_arg(args.series), index=args.index)
        d = describe(volume, args.path)
        # NaN/inf (e.g. the value range of an all-NaN float slab) are not JSON: null instead
        print(json.dumps(_json_safe(d), allow_nan=False) if args.json else _text(d))
        return 0
    # convert
    from app.core.io import read_labels, write_image, write_labels

    if args.reference:
        reference = read_image(args.reference, series=_series_arg(args.series), index=args.index)
        labels = read_labels(args.input, reference)
        out = write_labels(args.output, labels, reference, overwrite=args.overwrite)
    else:
        volume = read_image(args.input, series=_series_arg(args.series), index=args.index)
        out = write_image(args.output, volume, overwrite=args.overwrite)
        if not volume.spacing_known and str(out).lower().endswith((".nii", ".nii.gz", ".nrrd")):
            print(f"note: {args.input} has no usable spacing or orientation; {out} was written "
                  "with unit spacing, marked unknown", file=sys.stderr)
    print(f"wrote {out}")
    return 0
