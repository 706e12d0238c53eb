"""napari hooks named in ``app/napari.yaml``: reader, Labels writer, sample data.

Everything heavy is imported inside the functions: napari discovers plugins by importing this
module, and no napari import is needed here at all (layer data are plain tuples).

Layers carry ``scale``/``translate`` from the volume's spacing and origin (mm), and the
:class:`app.core.image.Volume` itself in ``metadata["samscope_volume"]`` so that the writer
(and the Segment dock) can write masks with the source's exact geometry, DICOM SEG included.
A 2D picture gives 2D layers (the volume's single z is dropped).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "VOLUME_KEY",
    "get_reader",
    "read_layers",
    "volume_layer_data",
    "labels_layer_data",
    "volume_from_layer",
    "write_labels",
    "sample_ct",
    "sample_ultrasound",
]

#: key of the source Volume in a layer's ``metadata``
VOLUME_KEY = "samscope_volume"

LayerData = tuple[Any, dict[str, Any], str]

_DICOM_SNIFF_FILES = 200


def _looks_like_dicom_folder(folder: Path) -> bool:
    """True if a DICOMDIR or a file with the DICOM magic is among the first files."""
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if name.upper() == "DICOMDIR":
                return True
            try:
                with open(Path(root) / name, "rb") as fh:
                    fh.seek(128)
                    if fh.read(4) == b"DICM":
                        return True
            except OSError:
                pass
            seen += 1
            if seen >= _DICOM_SNIFF_FILES:
                return False
    return False


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_layers` when SAMScope can read ``path``, else None (never raises)."""
    from app.core.io import guess_format

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths:
        return None
    for p in paths:
        p = Path(p)
        if p.is_dir():
            if not _looks_like_dicom_folder(p):
                return None
        elif guess_format(p) is None:
            return None
    return read_layers


def volume_layer_data(volume, name: str | None = None) -> LayerData:
    """An Image layer tuple for ``volume`` (2D pictures become 2D layers)."""
    data = volume.pixels[0] if volume.is_2d else volume.pixels
    geo = volume.napari_kwargs()
    scale, translate = geo["scale"], geo["translate"]
    if volume.is_2d:
        scale, translate = scale[1:], translate[1:]
    kwargs: dict[str, Any] = {
        "name": name or Path(volume.source).name or "image",
        "scale": scale,
        "translate": translate,
        "rgb": volume.is_rgb,
        "metadata": {VOLUME_KEY: volume, "source": volume.source},
    }
    if volume.spacing_known:
        kwargs["units"] = ("mm",) * len(scale)
    if not volume.is_rgb:
        window = volume.display_window()
        lo, hi = float(window.low), float(window.high)
        kwargs["contrast_limits"] = (lo, hi if hi > lo else lo + 1.0)
        kwargs["colormap"] = "gray"
    return data, kwargs, "image"


def labels_layer_data(labels: np.ndarray, volume, name: str = "labels") -> LayerData:
    """A Labels layer tuple for ``labels`` (Z, Y, X) on ``volume``'s grid."""
    labels = np.asarray(labels)
    data = labels[0] if volume.is_2d and labels.ndim == 3 else labels
    image_data, image_kwargs, _ = volume_layer_data(volume)
    kwargs = {
        "name": name,
        "scale": image_kwargs["scale"],
        "translate": image_kwargs["translate"],
        "metadata": {VOLUME_KEY: volume, "source": volume.source},
    }
    if "units" in image_kwargs:
        kwargs["units"] = image_kwargs["units"]
    return data, kwargs, "labels"


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read one path (or several DICOM files of one series) into napari layer tuples."""
    from app.core.io import read_image

    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if len(paths) > 1 and all(Path(p).is_file() for p in paths):
        from app.core.io import guess_format
        from app.core.io.dicom import read_dicom_files

        if all(guess_format(p) == "dicom" for p in paths):
            return [volume_layer_data(read_dicom_files([Path(p) for p in paths]))]
    return [volume_layer_data(read_image(p)) for p in paths]


def volume_from_layer(data: np.ndarray, attributes: dict[str, Any]):
    """The :class:`~app.core.image.Volume` behind a layer's data and attributes.

    The one conversion from a napari layer to a Volume, for the writer (a Labels layer's
    geometry) and for the Segment dock (an Image layer to annotate). The reader's own Volume,
    kept in ``metadata``, wins when its shape fits the data; otherwise the geometry comes from
    the layer's ``scale`` and ``translate`` (napari's world axes taken as the array's (z, y, x),
    the identity direction of :class:`Volume`, so that ``Volume.napari_kwargs`` round-trips).

    Parameters
    ----------
    data : ndarray, shape (Y, X), (Z, Y, X), (Y, X, 3) or (Z, Y, X, 3) with ``rgb``
    attributes : dict
        ``scale``, ``translate``, ``metadata``, ``rgb`` (optional), ``name`` (optional), as
        napari passes them to writers or as a layer holds them.
    """
    from app.core.image import Volume

    data = np.asarray(data)
    meta = attributes.get("metadata") or {}
    rgb = bool(attributes.get("rgb", False))
    spatial = data.ndim - (1 if rgb else 0)
    volume = meta.get(VOLUME_KEY)
    if isinstance(volume, Volume):
        shape = volume.shape[1:] if volume.is_2d and spatial == 2 else volume.shape
        if tuple(data.shape[:spatial]) == tuple(shape):
            return volume
    if spatial not in (2, 3):
        raise ValueError(f"layer {attributes.get('name', '')!r} has {spatial} spatial axes "
                         f"(shape {data.shape}); SAMScope works on 2D images and 3D volumes")
    scale = attributes.get("scale")
    translate = attributes.get("translate")
    scale = tuple(float(s) for s in ((1.0,) * spatial if scale is None else scale))[-spatial:]
    translate = tuple(float(t) for t in
                      ((0.0,) * spatial if translate is None else translate))[-spatial:]
    pixels = data[None] if spatial == 2 else data
    if spatial == 2:
        scale, translate = (1.0, *scale), (0.0, *translate)
    return Volume(
        pixels=pixels,
        spacing_mm=scale,  # type: ignore[arg-type]
        origin_mm=translate,  # type: ignore[arg-type]
        is_2d=spatial == 2,
        source=str(meta.get("source", attributes.get("name", ""))),
        spacing_known=any(s != 1.0 for s in scale),
    )


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer for one Labels layer: ``.nii.gz``/``.nii``, ``.dcm`` (SEG) or ``.png``.

    napari's save dialog has already asked before replacing an existing file, so an existing
    output is replaced; a source image of the layer is never replaced.
    """
    from app.core.io import write_labels as _write

    labels = np.asarray(data)
    reference = volume_from_layer(labels, meta)
    if labels.ndim == 2:
        labels = labels[None]
    out = _write(
        path,
        labels,
        reference,
        overwrite=True,
        segment_names=meta.get("metadata", {}).get("segment_names"),
        algorithm=str(meta.get("metadata", {}).get("algorithm", "SAMScope")),
    )
    return [str(out)]


def _sample(name: str, label_name: str) -> list[LayerData]:
    from app.core.io.samples import SAMPLES, load_sample

    volume, labels = load_sample(name)
    return [
        volume_layer_data(volume, name=SAMPLES[name].title.split(",")[0]),
        labels_layer_data(labels, volume, name=f"{label_name} (ground truth)"),
    ]


def sample_ct() -> list[LayerData]:
    """3-slice abdominal CT (HU, window 40/400) and its liver label."""
    return _sample("ct", "liver")


def sample_ultrasound() -> list[LayerData]:
    """Fetal-head ultrasound (0.066 mm pixels) and its head mask."""
    return _sample("ultrasound", "fetal head")
