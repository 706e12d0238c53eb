"""Sample scans shipped with SAMScope (``assets/samples``, the package ``app.assets``).

Found with :mod:`importlib.resources`, so they work from a checkout, a wheel and the frozen
app alike. Licences: ``assets/LICENSES.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from app.core.image import Volume

__all__ = [
    "SampleInfo",
    "SAMPLES",
    "list_samples",
    "sample_path",
    "sample_labels_path",
    "load_sample",
]


@dataclass(frozen=True)
class SampleInfo:
    """One bundled sample: image, ground-truth labels and what they are."""

    name: str
    title: str
    image: str  # relative to the assets folder; a DICOM folder or a file
    labels: str
    label_names: tuple[str, ...]
    seg: str | None = None  # DICOM SEG of the same labels, when there is one
    pixel_size_mm: float | None = None  # for pictures whose file carries no spacing
    licence: str = ""


SAMPLES: dict[str, SampleInfo] = {
    s.name: s
    for s in (
        SampleInfo(
            name="ct",
            title="CT, 3 slices, with liver label",
            image="samples/ct_3slice/ct",
            labels="samples/ct_3slice/liver.nii.gz",
            seg="samples/ct_3slice/liver_seg.dcm",
            label_names=("liver",),
            licence="BSD-3-Clause (QIICR/dcmqi)",
        ),
        SampleInfo(
            name="ultrasound",
            title="Fetal head ultrasound with mask",
            image="samples/fetal_head_us/280_HC.png",
            labels="samples/fetal_head_us/280_HC_mask.png",
            label_names=("fetal head",),
            pixel_size_mm=0.110854208,
            licence="CC BY 4.0 (HC18, van den Heuvel et al. 2018)",
        ),
    )
}


def list_samples() -> list[str]:
    """Names accepted by :func:`sample_path` and :func:`load_sample`."""
    return list(SAMPLES)


def _info(name: str) -> SampleInfo:
    try:
        return SAMPLES[name]
    except KeyError:
        raise KeyError(f"unknown sample {name!r}; choose one of {list_samples()}") from None


def _asset(relative: str) -> Path:
    root = resources.files("app.assets")
    target = root.joinpath(*relative.split("/"))
    path = Path(str(target))
    if not path.exists():
        raise FileNotFoundError(f"sample file {relative} is missing from {root} (broken install?)")
    return path


def sample_path(name: str) -> Path:
    """Path of a sample's image: ``"ct"`` → a DICOM series folder, ``"ultrasound"`` → a PNG."""
    return _asset(_info(name).image)


def sample_labels_path(name: str, *, seg: bool = False) -> Path:
    """Path of a sample's ground truth (NIfTI/PNG; the DICOM SEG with ``seg=True``)."""
    info = _info(name)
    if seg:
        if info.seg is None:
            raise FileNotFoundError(f"sample {name!r} has no DICOM SEG")
        return _asset(info.seg)
    return _asset(info.labels)


def load_sample(name: str) -> tuple[Volume, np.ndarray]:
    """Read a sample and its ground truth.

    Returns
    -------
    volume : Volume
        With the pixel spacing filled in for pictures that do not carry it.
    labels : ndarray, shape (Z, Y, X), uint8
        Ground truth on the volume's grid (1 = the structure in ``SAMPLES[name].label_names``).
    """
    from app.core.io import read_image, read_labels

    info = _info(name)
    volume = read_image(sample_path(name))
    if info.pixel_size_mm is not None:
        volume = replace(
            volume,
            spacing_mm=(1.0, info.pixel_size_mm, info.pixel_size_mm),
            spacing_known=True,
        )
    labels = read_labels(sample_labels_path(name), volume)
    meta = dict(volume.meta)
    meta["sample"] = name
    meta["label_names"] = info.label_names
    return replace(volume, meta=meta), labels
