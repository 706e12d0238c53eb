"""DICOM SEG: label maps out (highdicom) referencing the source series, and back in.

Writing needs the source's DICOM headers (``Volume.meta["dicom_datasets"]``, kept by the DICOM
reader). Reading places each SEG frame on the reference's slice by the referenced SOP Instance
UID (and frame number), or else by its ImagePositionPatient, so frame order in the SEG never
matters. Segment numbers become label values; where BINARY segments overlap the higher segment
number wins (see :func:`read_seg_segments` for the separate masks).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ReadError, WriteError
from app.core.image import Volume

__all__ = ["build_seg", "read_seg_labels", "read_seg_segments", "SEGMENT_COLOURS"]

_SEG_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"}

#: display colours of segments 1, 2, ... (RGB 0-255), repeated cyclically
SEGMENT_COLOURS = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 190),
)
#: most segments we describe in one SEG (every value 1..max is a segment, so values survive)
MAX_SEGMENTS = 255


def _segment_name(names: dict[int, str] | list[str] | None, value: int) -> str:
    if isinstance(names, dict) and value in names:
        return str(names[value])
    if isinstance(names, list | tuple) and 0 < value <= len(names):
        return str(names[value - 1])
    return f"Segment {value}"


def build_seg(
    labels: np.ndarray,
    reference: Volume,
    *,
    segment_names: dict[int, str] | list[str] | None = None,
    algorithm: str = "SAMScope",
    path: Path | str = "",
) -> Any:
    """Build a highdicom ``Segmentation`` for ``labels`` on ``reference`` (not yet written).

    Parameters
    ----------
    labels : ndarray, shape (Z, Y, X), integer
        On the reference's grid, in its slice order; 0 is background; value ``v`` becomes
        segment number ``v`` (values 1..max are all described so they survive a round trip).
    reference : Volume
        Read from DICOM (needs ``meta["dicom_datasets"]``).
    segment_names, algorithm
        See :func:`app.core.io.write_labels`.

    Raises
    ------
    WriteError
        The reference is not DICOM, too many label values, or highdicom refuses the input.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from app import __version__

    datasets = reference.meta.get("dicom_datasets")
    if not datasets:
        fmt = reference.meta.get("format", "non-DICOM")
        raise WriteError(
            f"{path}: DICOM SEG needs a DICOM source image, {reference.source or 'the image'} "
            f"is {fmt}; write .nii.gz or .png instead"
        )
    labels = np.asarray(labels)
    n_values = int(labels.max(initial=0))
    if n_values == 0:
        raise WriteError(f"{path}: the label map is empty; a DICOM SEG needs at least one segment")
    if n_values > MAX_SEGMENTS:
        raise WriteError(
            f"{path}: label values up to {n_values}; DICOM SEG is limited here to {MAX_SEGMENTS}"
        )
    # undo our slice sorting for multi-frame sources: highdicom maps frames in file order
    unique_sources = list({id(ds): ds for ds in datasets}.values())
    if len(unique_sources) == 1 and int(getattr(unique_sources[0], "NumberOfFrames", 1) or 1) > 1:
        src = unique_sources[0]
        n_frames = int(src.NumberOfFrames)
        pixel_array = np.zeros(
            (n_frames, *labels.shape[1:]), np.uint8 if n_values < 256 else np.uint16
        )
        for z, frame_number in enumerate(reference.meta["frame_numbers"]):
            pixel_array[frame_number - 1] = labels[z]
        source_images = [src]
    else:
        if len(unique_sources) != labels.shape[0]:
            raise WriteError(
                f"{path}: the reference has {len(unique_sources)} source files for "
                f"{labels.shape[0]} slices; cannot reference them one to one"
            )
        pixel_array = labels.astype(np.uint8 if n_values < 256 else np.uint16)
        source_images = list(datasets)
    source_images = [_sanitised(ds) for ds in source_images]
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    from pydicom.sr.coding import Code

    from app.core.terminology import coded

    descriptions = []
    for v in range(1, n_values + 1):
        rgb = SEGMENT_COLOURS[(v - 1) % len(SEGMENT_COLOURS)]
        cielab = hd.color.CIELabColor.from_rgb(*rgb) if hasattr(hd.color, "CIELabColor") else None
        kwargs = {}
        if cielab is not None:
            kwargs["display_color"] = cielab
        name = _segment_name(segment_names, v)
        # a name from the terminology list (app.core.terminology) carries its SNOMED CT codes
        term = coded(name)
        category = Code(*term["category"]) if term else codes.SCT.Tissue
        prop_type = Code(*term["type"]) if term else codes.SCT.Tissue
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=v,
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=prop_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=algo,
                **kwargs,
            )
        )
    try:
        number = int(getattr(source_images[0], "SeriesNumber", 0) or 0) + 1000
    except (TypeError, ValueError):
        number = 1000
    try:
        with warnings.catch_warnings():
            # highdicom warns about the source's patient-name style; not ours to fix
            warnings.simplefilter("ignore", UserWarning)
            seg = hd.seg.Segmentation(
                source_images=source_images,
                pixel_array=pixel_array,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=number % 2**31,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="SAMScope",
                manufacturer_model_name="SAMScope",
                software_versions=__version__,
                device_serial_number="0",
                series_description=f"{algorithm} segmentation"[:64],
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise WriteError(f"{path}: highdicom could not build the DICOM SEG: {exc}") from exc
    return seg


def _sanitised(ds):
    """A copy of a source header with values highdicom rejects but viewers accept cleaned."""
    out = copy.deepcopy(ds)
    if "SpecificCharacterSet" in out and not str(out.SpecificCharacterSet or "").strip():
        del out.SpecificCharacterSet
    return out


# --- reading ------------------------------------------------------------------------------


def _first(seq, *names):
    item = seq
    for name in names:
        inner = getattr(item, name, None) if item is not None else None
        if not inner:
            return None
        item = inner[0]
    return item


def read_seg_segments(
    path: str | os.PathLike[str], reference: Volume | None = None
) -> dict[int, np.ndarray]:
    """Each segment of a DICOM SEG as a bool mask, ``{segment_number: (Z, Y, X) bool}``.

    Without a reference the slices are the SEG's own distinct frame positions, sorted along the
    slice normal (or frame order when it has none).
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged input
        raise ReadError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    try:
        is_seg = str(ds.get("SOPClassUID", "")) in _SEG_SOP_CLASSES or ds.get("Modality") == "SEG"
        modality = ds.get("Modality", "?")
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"{path}: damaged DICOM header ({type(exc).__name__}: {exc})") from exc
    if not is_seg:
        raise ReadError(
            f"{path}: is a DICOM {modality} image, not a DICOM SEG; "
            "labels must be a SEG, NIfTI, NRRD or PNG file"
        )
    try:
        frames = np.asarray(ds.pixel_array)
        per_frame = list(ds.PerFrameFunctionalGroupsSequence)
        seg_type = str(ds.get("SegmentationType", "BINARY"))
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"{path}: damaged DICOM SEG ({type(exc).__name__}: {exc})") from exc
    if frames.ndim == 2:
        frames = frames[None]
    if len(per_frame) != frames.shape[0]:
        raise ReadError(f"{path}: {len(per_frame)} frame descriptions for {frames.shape[0]} frames")
    if seg_type == "FRACTIONAL":
        scale = float(ds.get("MaximumFractionalValue", 255) or 255)
        frames = frames.astype(np.float32) / scale >= 0.5
    elif seg_type == "LABELMAP":
        raise ReadError(f"{path}: LABELMAP SEGs are not supported yet; convert to BINARY")
    else:
        frames = frames > 0
    try:
        shared = _first(ds, "SharedFunctionalGroupsSequence")
        iop = None
        orient = _first(shared, "PlaneOrientationSequence") if shared is not None else None
        if orient is not None:
            iop = np.asarray(orient.ImageOrientationPatient, float)
        seg_numbers, positions, refs = [], [], []
        for i, f in enumerate(per_frame):
            ident = _first(f, "SegmentIdentificationSequence") or _first(
                shared, "SegmentIdentificationSequence"
            )
            if ident is None:
                raise ReadError(f"{path}: frame {i + 1} names no segment")
            seg_numbers.append(int(ident.ReferencedSegmentNumber))
            pos = _first(f, "PlanePositionSequence") or _first(shared, "PlanePositionSequence")
            positions.append(None if pos is None else np.asarray(pos.ImagePositionPatient, float))
            src = _first(f, "DerivationImageSequence", "SourceImageSequence") or _first(
                shared, "DerivationImageSequence", "SourceImageSequence"
            )
            if src is not None:
                fn = src.get("ReferencedFrameNumber", None)
                fn = (
                    int(fn[0] if isinstance(fn, list | pydicom.multival.MultiValue) else fn)
                    if fn
                    else 1
                )
                refs.append((str(src.ReferencedSOPInstanceUID), fn))
            else:
                refs.append(None)
            if iop is None:
                o = _first(f, "PlaneOrientationSequence")
                if o is not None:
                    iop = np.asarray(o.ImageOrientationPatient, float)
    except ReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - damaged elements are parsed lazily, raise anything
        raise ReadError(
            f"{path}: damaged DICOM SEG frame descriptions ({type(exc).__name__}: {exc})"
        ) from exc
    if frames.ndim != 3:
        raise ReadError(f"{path}: unexpected SEG pixel array shape {frames.shape}")
    rows, cols = frames.shape[1:]
    if reference is not None:
        if (rows, cols) != reference.shape[1:]:
            raise ReadError(
                f"{path}: SEG frames are {rows}x{cols}, the image slices {reference.shape[1]}x"
                f"{reference.shape[2]} (mask shape {(frames.shape[0], rows, cols)} vs image shape "
                f"{reference.shape})"
            )
        z_of = _place_on_reference(path, refs, positions, reference)
        n_z = reference.shape[0]
    else:
        z_of, n_z = _own_slices(positions, iop)
    out: dict[int, np.ndarray] = {}
    for i, (number, z) in enumerate(zip(seg_numbers, z_of)):
        mask = out.setdefault(number, np.zeros((n_z, rows, cols), bool))
        mask[z] |= frames[i]
    try:
        numbers = [int(item.SegmentNumber) for item in ds.get("SegmentSequence", [])]
    except Exception as exc:  # noqa: BLE001
        raise ReadError(f"{path}: damaged SegmentSequence ({exc})") from exc
    for number in numbers:
        out.setdefault(number, np.zeros((n_z, rows, cols), bool))
    return dict(sorted(out.items()))


def _place_on_reference(path: Path, refs, positions, reference: Volume) -> list[int]:
    uids = reference.meta.get("sop_instance_uids") or []
    frame_numbers = reference.meta.get("frame_numbers") or [1] * len(uids)
    index = {(u, fn): z for z, (u, fn) in enumerate(zip(uids, frame_numbers))}
    inv = np.linalg.inv(reference.affine_lps)
    z_of = []
    for i, (ref, pos) in enumerate(zip(refs, positions)):
        if ref is not None and ref in index:
            z_of.append(index[ref])
            continue
        if pos is not None and reference.spacing_known:
            zyx = inv @ np.append(pos, 1.0)
            z = int(round(zyx[0]))
            if (
                abs(zyx[0] - z) < 0.05
                and np.abs(zyx[1:3]).max() < 0.05
                and 0 <= z < reference.shape[0]
            ):
                z_of.append(z)
                continue
            raise ReadError(
                f"{path}: SEG frame {i + 1} at position {np.round(pos, 3).tolist()} is not on a "
                f"slice of {reference.source or 'the reference'} (voxel {np.round(zyx[:3], 3).tolist()})"
            )
        if ref is not None and not uids and reference.shape[0] == 1:
            z_of.append(0)
            continue
        raise ReadError(
            f"{path}: SEG frame {i + 1} references {ref[0] if ref else 'no image'}, which is not a "
            f"slice of {reference.source or 'the reference'}"
        )
    return z_of


def _own_slices(positions, iop) -> tuple[list[int], int]:
    if all(p is not None for p in positions) and iop is not None:
        normal = np.cross(iop[:3], iop[3:])
        d = np.round(np.array([p @ normal for p in positions]), 3)
        levels = np.unique(d)
        return [int(np.searchsorted(levels, x)) for x in d], len(levels)
    return list(range(len(positions))), len(positions)


def read_seg_labels(path: str | os.PathLike[str], reference: Volume | None = None) -> np.ndarray:
    """A DICOM SEG as one label map ``(Z, Y, X)`` uint8/uint16 (segment number = value)."""
    segments = read_seg_segments(path, reference)
    if not segments:
        raise ReadError(f"{path}: the SEG holds no segments")
    top = max(segments)
    first = next(iter(segments.values()))
    labels = np.zeros(first.shape, np.uint8 if top < 256 else np.uint16)
    for number, mask in segments.items():  # ascending: the higher number wins overlaps
        labels[mask] = number
    return labels
