"""ITK-SNAP's label description file: label value -> colour, visibility and name.

Written beside a NIfTI label map so that ITK-SNAP (Segmentation > Import Label Descriptions)
and 3D Slicer show the objects with their names and colours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["write_itksnap_labels", "read_itksnap_labels", "itksnap_path_for"]

_HEADER = """################################################
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
################################################
"""


def itksnap_path_for(nifti_path: str | os.PathLike) -> Path:
    """``scan_labels.nii.gz`` -> ``scan_labels.label.txt`` (same folder)."""
    p = Path(nifti_path)
    stem = p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem
    return p.with_name(f"{stem}.label.txt")


def write_itksnap_labels(path: str | os.PathLike, labels: Sequence[int],
                         names: Mapping[int, str],
                         colours: Sequence[tuple[int, int, int]]) -> Path:
    """Write the description of ``labels`` (values > 0); ``colours[(v - 1) % len]`` is label
    ``v``'s colour. Atomic: a temporary file renamed into place."""
    from app.core.io._atomic import write_bytes_atomic

    lines = [_HEADER, '    0     0    0    0        0  0  0    "Clear Label"\n']
    for v in sorted({int(v) for v in labels if int(v) > 0}):
        r, g, b = colours[(v - 1) % len(colours)]
        name = str(names.get(v, f"Label {v}")).replace('"', "'")
        lines.append(f"{v:5d} {r:5d} {g:4d} {b:4d}        1  1  1    \"{name}\"\n")
    return write_bytes_atomic(Path(path), "".join(lines).encode("utf-8"))


def read_itksnap_labels(path: str | os.PathLike) -> dict[int, tuple[tuple[int, int, int], str]]:
    """``{label: ((r, g, b), name)}`` from a description file (label 0 left out)."""
    import shlex

    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = shlex.split(line)
        v = int(parts[0])
        if v:
            out[v] = ((int(parts[1]), int(parts[2]), int(parts[3])), parts[7])
    return out
