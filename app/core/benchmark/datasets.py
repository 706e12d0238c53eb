"""Find the datasets in a folder and turn them into 2D evaluation samples.

Layouts recognised (:func:`detect_layout`):

* ``msd`` -- Medical Segmentation Decathlon: ``dataset.json`` with ``labels`` and ``training``
  (``[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]``).
* ``nnunet_v2`` -- nnU-Net v2 raw: ``dataset.json`` with ``channel_names``, ``labels``
  (name -> value) and ``file_ending``; ``imagesTr/<case>_0000<ending>``,
  ``labelsTr/<case><ending>`` (channel 0 is used).
* ``pairs_2d`` -- ``images/`` + ``masks/`` (also ``imgs``/``labels``/``gts``/...) matched by file
  stem; mask stems may end in ``_mask``, ``_seg``, ``_segmentation``, ``_label``, ``_gt``,
  ``_annotation``; masks 0/255, 0/1 or integer labels. A ``cases.csv`` with ``image`` and
  ``pixel_size_mm`` columns gives per-image pixel spacing.
* ``medsam_npz`` -- MedSAM-style ``.npz`` files with ``imgs`` ((H, W), (H, W, 3) or (D, H, W))
  and ``gts`` (same spatial shape, integer labels), optional ``spacing``.
* a **suite** -- any folder whose sub-folders (up to three levels down) hold such datasets.

Each (dataset, label value) is a task evaluated as binary. 3D volumes are evaluated on the 2D
axial slices where the task's mask is non-empty, optionally subsampled reproducibly. Pairs that
cannot be matched are listed in ``Dataset.skipped`` (never fatal); files that fail to read are
reported by the runner.

Discovery holds no per-image object: a dataset's cases are a :class:`CaseList`, the file
names packed in a few byte strings and integer arrays (tens of bytes per image, ~60 MB for a
million images), that makes each :class:`CaseRef` when it is asked for; :func:`iter_cases`
yields them in natural order, and images are read one case at a time by :func:`iter_images`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.core.errors import DatasetError, ReadError
from app.core.image import Image2D, Volume, Window

__all__ = [
    "LAYOUTS",
    "CaseRef",
    "CaseList",
    "Skipped",
    "Task",
    "Dataset",
    "Suite",
    "ImageSample",
    "detect_layout",
    "open_dataset",
    "discover",
    "load_case",
    "iter_images",
    "iter_cases",
    "natural_key",
]

LAYOUTS = ("msd", "nnunet_v2", "pairs_2d", "medsam_npz")
_IMAGE_DIRS = ("images", "imgs", "image", "img")
_MASK_DIRS = ("masks", "mask", "labels", "label", "gts", "gt", "segmentations", "annotations")
_MASK_SUFFIXES = ("_mask", "_masks", "_seg", "_segmentation", "_label", "_labels", "_gt",
                  "_annotation")
_RASTER = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class CaseRef:
    """One image (2D picture, 3D volume or .npz) with its label file.

    ``spacing_mm`` (row, col) overrides the file's pixel spacing (e.g. from ``cases.csv``).
    """

    dataset: str
    case: str
    image: Path
    label: Path | None = None
    spacing_mm: tuple[float, float] | None = None


@dataclass(frozen=True)
class Skipped:
    """A file left out, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Task:
    """A (dataset, label value) pair, evaluated as a binary segmentation."""

    dataset: str
    label: int
    name: str


class _Strings:
    """Many strings in one UTF-8 byte string and an offset array (no object per string)."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("q")

    def append(self, text: str) -> None:
        self._blob += text.encode("utf-8", "surrogateescape")
        self._ends.append(len(self._blob))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        start = self._ends[i - 1] if i > 0 else 0
        return self._blob[start:self._ends[i]].decode("utf-8", "surrogateescape")

    def nbytes(self) -> int:
        return len(self._blob) + self._ends.itemsize * len(self._ends)


class CaseList(Sequence[CaseRef]):
    """The cases of a dataset, packed: a sequence of :class:`CaseRef` made on access.

    Holds per case its name, the file names of its image and label and the index of their
    folders (a few tens of bytes), so that discovery of a million images holds no million
    objects. ``spacing_mm`` overrides are kept only for the cases that have one.

    Parameters
    ----------
    dataset : str
    refs : iterable of CaseRef
        Consumed once, in order (a generator is fine).
    """

    def __init__(self, dataset: str, refs: Iterable[CaseRef] = ()) -> None:
        self.dataset = dataset
        self._case, self._image, self._label = _Strings(), _Strings(), _Strings()
        self._dirs: list[str] = []
        self._dir_index: dict[str, int] = {}
        self._image_dir, self._label_dir = array("i"), array("i")
        self._spacing: dict[int, tuple[float, float]] = {}
        for ref in refs:
            self._add(ref)

    def _dir(self, path: Path) -> int:
        d = str(path.parent)
        k = self._dir_index.get(d)
        if k is None:
            k = self._dir_index[d] = len(self._dirs)
            self._dirs.append(d)
        return k

    def _add(self, ref: CaseRef) -> None:
        if ref.spacing_mm is not None:
            self._spacing[len(self._case)] = ref.spacing_mm
        self._case.append(ref.case)
        self._image.append(ref.image.name)
        self._image_dir.append(self._dir(ref.image))
        if ref.label is None:
            self._label.append("")
            self._label_dir.append(-1)
        else:
            self._label.append(ref.label.name)
            self._label_dir.append(self._dir(ref.label))

    def renamed(self, dataset: str) -> CaseList:
        """The same cases under another dataset name (the storage is shared)."""
        other = object.__new__(CaseList)
        other.__dict__.update(self.__dict__)
        other.dataset = dataset
        return other

    def __len__(self) -> int:
        return len(self._case)

    def _ref(self, i: int) -> CaseRef:
        lab = self._label_dir[i]
        return CaseRef(self.dataset, self._case[i],
                       Path(self._dirs[self._image_dir[i]]) / self._image[i],
                       None if lab < 0 else Path(self._dirs[lab]) / self._label[i],
                       self._spacing.get(i))

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._ref(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"case index {i} out of range ({n} cases)")
        return self._ref(i % n)

    def __iter__(self) -> Iterator[CaseRef]:
        return (self._ref(i) for i in range(len(self)))

    def case_name(self, i: int) -> str:
        return self._case[i]

    def natural_order(self) -> array:
        """Indices of the cases sorted by :func:`natural_key` of their names (stable)."""
        order = sorted(range(len(self)), key=lambda i: _natural_text(self._case[i]))
        return array("i" if len(self) < 2**31 else "q", order)

    def nbytes(self) -> int:
        """Bytes held (the packed names and arrays, without the small folder table)."""
        return (self._case.nbytes() + self._image.nbytes() + self._label.nbytes()
                + 4 * (len(self._image_dir) + len(self._label_dir)))


@dataclass
class Dataset:
    """A detected dataset: its layout, cases, label names and what was skipped.

    ``cases`` is a :class:`CaseList` (a sequence of :class:`CaseRef`) for discovered datasets.
    """

    name: str
    root: Path
    layout: str
    cases: Sequence[CaseRef]
    labels: dict[int, str] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def tasks(self) -> list[Task]:
        return [Task(self.name, v, n) for v, n in sorted(self.labels.items()) if v != 0]


@dataclass
class Suite:
    """Datasets found under a folder (one, for a dataset folder)."""

    root: Path
    datasets: list[Dataset]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def tasks(self) -> list[Task]:
        return [t for d in self.datasets for t in d.tasks]


# --- detection ---------------------------------------------------------------------------------
def _find_sub(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        for cand in (root / n, root / n.capitalize(), root / n.upper()):
            if cand.is_dir():
                return cand
    return None


def detect_layout(path: str | Path) -> str | None:
    """The layout of the dataset at ``path`` (one of :data:`LAYOUTS`), or None."""
    p = Path(path)
    if p.is_file():
        return "medsam_npz" if p.suffix == ".npz" else None
    if not p.is_dir():
        return None
    js = p / "dataset.json"
    if js.is_file():
        try:
            meta = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            if not (_find_sub(p, _IMAGE_DIRS) and _find_sub(p, _MASK_DIRS)):
                return "msd"  # its reader then names what is wrong with dataset.json
            meta = {}
        if isinstance(meta, dict):
            if "channel_names" in meta or "file_ending" in meta:
                return "nnunet_v2"
            if "labels" in meta and "training" in meta:
                return "msd"
    if _find_sub(p, _IMAGE_DIRS) and _find_sub(p, _MASK_DIRS):
        return "pairs_2d"
    if any(p.glob("*.npz")):
        return "medsam_npz"
    return None


def open_dataset(path: str | Path) -> Dataset:
    """Read the dataset at ``path``.

    Raises
    ------
    DatasetError
        The folder is not one of the known layouts (the message says what was looked for).
    """
    p = Path(path)
    layout = detect_layout(p)
    if layout == "msd":
        return _open_msd(p)
    if layout == "nnunet_v2":
        return _open_nnunet(p)
    if layout == "pairs_2d":
        return _open_pairs(p)
    if layout == "medsam_npz":
        return _open_npz(p)
    raise DatasetError(
        f"{p}: not a dataset (looked for dataset.json with labels+training (MSD) or "
        "channel_names+file_ending (nnU-Net v2), images/+masks/ folders, or .npz files)"
    )


def discover(path: str | Path, max_depth: int = 3) -> Suite:
    """All datasets at or under ``path`` (a dataset folder gives a suite of one).

    Raises
    ------
    DatasetError
        ``path`` does not exist or holds no dataset within ``max_depth`` levels.
    """
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    found: list[Dataset] = []

    def walk(p: Path, depth: int) -> None:
        if detect_layout(p) is not None:
            found.append(open_dataset(p))
            return
        if depth >= max_depth or not p.is_dir():
            return
        for child in sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith(".")):
            walk(child, depth + 1)

    walk(root, 0)
    if not found:
        raise DatasetError(f"{root}: no dataset found (MSD, nnU-Net v2, images/+masks/, .npz)")
    # dataset names must be unique within a suite: qualify clashes with the parent folder
    names = [d.name for d in found]
    for d in found:
        if names.count(d.name) > 1:
            d.name = f"{d.root.parent.name}/{d.root.name}"
            d.cases = (d.cases.renamed(d.name) if isinstance(d.cases, CaseList) else
                       [CaseRef(d.name, c.case, c.image, c.label, c.spacing_mm)
                        for c in d.cases])
    return Suite(root=root, datasets=found, skipped=[s for d in found for s in d.skipped])


def _rel(root: Path, entry: str) -> Path:
    return (root / entry.removeprefix("./")).resolve()


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".npz", *_RASTER):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    if not isinstance(meta.get("labels", {}), dict):
        raise DatasetError(f"{path}: 'labels' must be an object, got {meta['labels']!r:.60}")
    return meta


def _label_value(path: Path, value: object, name: object) -> int:
    """An integer label value from dataset.json (``"1"``, ``1`` or ``1.0``), or DatasetError."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        f = float("nan")
    if not np.isfinite(f) or f != int(f) or f < 0:
        raise DatasetError(
            f"{path}: label {name!r} has value {value!r}: expected a whole number >= 0"
        )
    return int(f)


def _open_msd(root: Path) -> Dataset:
    meta = _read_dataset_json(root)
    js = root / "dataset.json"
    labels = {_label_value(js, k, v): str(v) for k, v in meta.get("labels", {}).items()}
    if not isinstance(meta.get("training"), list):
        raise DatasetError(f"{js}: 'training' must be a list of {{image, label}} entries")
    skipped: list[Skipped] = []

    def refs() -> Iterator[CaseRef]:
        seen: set[str] = set()
        for i, entry in enumerate(meta.get("training", [])):
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or \
                    not isinstance(entry.get("label"), str):
                raise DatasetError(f"{js}: training entry {i} is not {{image: path, label: "
                                   f"path}}: {entry!r:.80}")
            img, lab = _rel(root, entry["image"]), _rel(root, entry["label"])
            if not img.is_file() or not lab.is_file():
                missing = img if not img.is_file() else lab
                skipped.append(Skipped(str(missing), "listed in dataset.json but missing"))
                continue
            case = _stem(img)
            if case in seen:  # its rows would be the first one's (same case, same groups)
                skipped.append(Skipped(str(img), f"a second training entry for case {case!r}"))
                continue
            seen.add(case)
            yield CaseRef(root.name, case, img, lab)

    cases = CaseList(root.name, refs())
    return Dataset(root.name, root, "msd", cases, labels, skipped)


def _open_nnunet(root: Path) -> Dataset:
    meta = _read_dataset_json(root)
    ending = meta.get("file_ending", ".nii.gz")
    labels = {}
    for name, value in meta.get("labels", {}).items():
        if isinstance(value, list):
            continue  # a region-based label (a union of values): not a task of its own
        labels[_label_value(root / "dataset.json", value, name)] = str(name)
    skipped: list[Skipped] = []
    lab_dir, img_dir = root / "labelsTr", root / "imagesTr"

    def refs() -> Iterator[CaseRef]:
        if not lab_dir.is_dir():
            return
        with os.scandir(lab_dir) as it:  # as glob("*<ending>"): no hidden files
            names = sorted(e.name for e in it if e.name.endswith(ending)
                           and not e.name.startswith(".") and e.is_file())
        for name in names:
            case = name[: -len(ending)]
            img = img_dir / f"{case}_0000{ending}"
            if not img.is_file():
                skipped.append(Skipped(str(lab_dir / name), f"no image {img.name} in imagesTr"))
                continue
            yield CaseRef(root.name, case, img, lab_dir / name)

    cases = CaseList(root.name, refs())
    return Dataset(root.name, root, "nnunet_v2", cases, labels, skipped)


def _mask_key(path: Path) -> str:
    s = _stem(path)
    low = s.lower()
    for suf in _MASK_SUFFIXES:
        if low.endswith(suf):
            return s[: -len(suf)]
    return s


def _spacing_table(root: Path) -> dict[str, tuple[float, float]]:
    table = root / "cases.csv"
    if not table.is_file():
        return {}
    out = {}
    try:
        with table.open(newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.DictReader(fh), start=2):
                column = "pixel_size_mm" if row.get("pixel_size_mm") else "spacing_mm"
                size = (row.get(column) or "").strip()
                name = row.get("image") or row.get("case")
                if not (size and name):
                    continue  # no value: that image's spacing is unknown (no HD95/NSD)
                try:
                    value = float(size)
                except ValueError:
                    value = float("nan")
                if not (np.isfinite(value) and value > 0):
                    # one bad value must not silently change any case's metrics
                    raise DatasetError(
                        f"{table}: row {n} ({name}): {column} {size!r} is not a positive "
                        "finite number of mm; fix it, or leave it empty for unknown spacing"
                    )
                out[_stem(Path(name))] = (value, value)
    except UnicodeDecodeError:
        raise DatasetError(f"{table}: not UTF-8 text") from None
    except (OSError, csv.Error) as exc:
        raise DatasetError(f"{table}: could not be read ({exc})") from None
    return out


def _file_names(folder: Path, endings: tuple[str, ...]) -> list[str]:
    """Sorted names of the files in ``folder`` ending (case-insensitively) in ``endings``
    (names only: no Path object per file)."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name.lower().endswith(endings) and e.is_file())


def _open_pairs(root: Path) -> Dataset:
    img_dir, mask_dir = _find_sub(root, _IMAGE_DIRS), _find_sub(root, _MASK_DIRS)
    assert img_dir is not None and mask_dir is not None
    exts = (*_RASTER, ".nii", ".nii.gz", ".nrrd")
    masks: dict[str, str] = {}
    skipped: list[Skipped] = []
    for m in _file_names(mask_dir, exts):
        key = _mask_key(Path(m))
        if key in masks:
            skipped.append(Skipped(str(mask_dir / m), f"second mask for image stem {key!r}"))
        else:
            masks[key] = m
    spacing = _spacing_table(root)
    used: set[str] = set()

    def refs() -> Iterator[CaseRef]:
        for name in _file_names(img_dir, exts):
            key = _stem(Path(name))
            m = masks.get(key)
            if m is None:
                skipped.append(Skipped(str(img_dir / name), "no mask with the same file stem"))
                continue
            if key in used:  # e.g. a.png and a.jpg: one mask, and the same case's rows
                skipped.append(Skipped(str(img_dir / name),
                                       f"a second image for file stem {key!r}"))
                continue
            used.add(key)
            yield CaseRef(root.name, key, img_dir / name, mask_dir / m, spacing.get(key))

    cases = CaseList(root.name, refs())
    for key, m in masks.items():
        if key not in used:
            skipped.append(Skipped(str(mask_dir / m), "no image with the same file stem"))
    labels = _scan_label_values((c.label for c in cases if c.label is not None), skipped)
    if list(labels) == [1]:
        labels = {1: root.name}
    return Dataset(root.name, root, "pairs_2d", cases, labels, skipped)


def _scan_label_values(paths: Iterable[Path], skipped: list[Skipped]) -> dict[int, str]:
    from PIL import Image

    values: set[int] = set()
    for p in paths:
        try:
            if p.suffix.lower() in _RASTER:
                with Image.open(p) as im:
                    arr = np.asarray(im.convert("L") if im.mode not in ("L", "I", "I;16") else im)
            else:
                from app.core.io import read_labels

                arr = read_labels(p)
        except Exception as exc:  # noqa: BLE001 - any unreadable mask is skipped, not fatal
            skipped.append(Skipped(str(p), f"unreadable mask: {exc}"))
            continue
        u = set(np.unique(arr).tolist())
        # 0/255 and 0/1 masks are one object (label 1), as read_labels maps 255 -> 1
        values.update({1} if u <= {0, 255} or u <= {0, 1} else {int(v) for v in u if v > 0})
        if 255 in u and len(u - {0, 255}) > 0:
            odd = sorted(int(v) for v in u if v > 0)
            skipped.append(Skipped(str(p), f"mask values {odd}: 255 together with other labels "
                                   "(a mixed or anti-aliased mask?); each value is evaluated "
                                   "as a task of its own"))
    return {v: f"label{v}" for v in sorted(values)}


def _open_npz(root: Path) -> Dataset:
    files = [root] if root.is_file() else sorted(root.glob("*.npz"))
    name = root.stem if root.is_file() else root.name
    skipped: list[Skipped] = []
    values: set[int] = set()

    def refs() -> Iterator[CaseRef]:
        for f in files:
            try:
                with np.load(f, allow_pickle=False) as z:
                    if "imgs" not in z or "gts" not in z:
                        skipped.append(Skipped(str(f), "no 'imgs'/'gts' arrays (has "
                                               f"{list(z.keys())})"))
                        continue
                    gts = z["gts"]
            except Exception as exc:  # noqa: BLE001
                skipped.append(Skipped(str(f), f"unreadable .npz: {exc}"))
                continue
            values.update(int(v) for v in np.unique(gts) if v > 0)
            yield CaseRef(name, f.stem, f, None)

    cases = CaseList(name, refs())
    labels = {v: (name if len(values) == 1 else f"label{v}") for v in sorted(values)}
    return Dataset(name, root, "medsam_npz", cases, labels, skipped)


# --- loading ---------------------------------------------------------------------------------
def _npz_volume(path: Path) -> tuple[Volume, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        imgs, gts = np.asarray(z["imgs"]), np.asarray(z["gts"])
        spacing = np.asarray(z["spacing"], float).ravel() if "spacing" in z else None
    is_2d = gts.ndim == 2
    if is_2d:
        pixels = imgs[None]
        labels = gts[None]
    else:
        pixels, labels = imgs, gts
    if pixels.shape[:3] != labels.shape:
        raise ReadError(f"{path}: imgs {imgs.shape} and gts {gts.shape} differ in size")
    sp = (1.0, 1.0, 1.0)
    known = spacing is not None
    if known:
        sp = tuple(float(s) for s in (spacing if spacing.size == 3 else [1.0, *spacing[-2:]]))
    vol = Volume(pixels=pixels, spacing_mm=sp, is_2d=is_2d, spacing_known=known,
                 source=str(path), window=Window(127.5, 255.0, "full")
                 if pixels.dtype == np.uint8 else None)
    return vol, labels.astype(np.int32)


def load_case(ref: CaseRef) -> tuple[Volume, np.ndarray]:
    """Read a case's image and label map, aligned.

    Returns
    -------
    volume : Volume
    labels : ndarray of int, shape (Z, Y, X)

    Raises
    ------
    ReadError
        Unreadable files, or an image and mask of different sizes.
    """
    if ref.image.suffix == ".npz":
        return _npz_volume(ref.image)
    from app.core.io import read_image, read_labels

    vol = read_image(ref.image)
    if ref.label is None:
        raise ReadError(f"{ref.image}: no label file")
    labels = read_labels(ref.label, vol)
    if labels.shape != vol.shape:
        raise ReadError(
            f"{ref.label}: mask shape {labels.shape} differs from image {ref.image} {vol.shape}"
        )
    return vol, labels


@dataclass(frozen=True, eq=False)
class ImageSample:
    """One 2D image and the ground truth of each task present on it.

    Attributes
    ----------
    ref : CaseRef
    slice_index : int
        Axial slice (0 for 2D pictures).
    image : Image2D
    masks : dict[int, ndarray of bool, shape (H, W)]
        Label value -> binary ground truth (non-empty).
    spacing_mm : (row, col) or None
        None when the pixel spacing is unknown (then no HD95/NSD).
    case_id : str
        ``case`` for 2D, ``case:z<k>`` for a slice of a volume.
    """

    ref: CaseRef
    slice_index: int
    image: Image2D
    masks: dict[int, np.ndarray]
    spacing_mm: tuple[float, float] | None
    case_id: str


def _choose_slices(nonempty: list[int], max_slices: int | None, rng: np.random.Generator):
    if max_slices is None or len(nonempty) <= max_slices:
        return list(nonempty)
    picked = rng.choice(len(nonempty), size=max_slices, replace=False)
    return sorted(nonempty[i] for i in picked)


def iter_images(
    ref: CaseRef,
    labels_wanted: list[int],
    *,
    max_slices: int | None = None,
    seed: int = 0,
    loaded: tuple[Volume, np.ndarray] | None = None,
) -> Iterator[ImageSample]:
    """The 2D images of a case on which at least one wanted label is present.

    For each label the non-empty slices are found; with ``max_slices`` a reproducible subset
    (``derive_rng(seed, dataset, case, label)``) is kept. Images are yielded in slice order,
    each with every selected task's mask, so an image is embedded once for all its tasks.
    """
    from app.core.prompts import derive_rng

    vol, labels = loaded if loaded is not None else load_case(ref)
    per_slice: dict[int, list[int]] = {}
    for value in labels_wanted:
        present = np.flatnonzero((labels == value).reshape(labels.shape[0], -1).any(axis=1))
        chosen = _choose_slices(
            present.tolist(), max_slices, derive_rng(seed, ref.dataset, ref.case, value)
        )
        for z in chosen:
            per_slice.setdefault(z, []).append(value)
    if ref.spacing_mm is not None:
        spacing = ref.spacing_mm
    elif vol.spacing_known:
        spacing = (float(vol.spacing_mm[1]), float(vol.spacing_mm[2]))
    else:
        spacing = None
    for z in sorted(per_slice):
        image = vol.slice(z)
        if spacing is not None:
            image = Image2D(image.pixels, image.window, image.modality, spacing)
        masks = {v: labels[z] == v for v in per_slice[z]}
        case_id = ref.case if vol.n_slices == 1 else f"{ref.case}:z{z}"
        yield ImageSample(ref, z, image, masks, spacing, case_id)


def natural_key(text: str) -> list:
    """Sort key that orders ``case2`` before ``case10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _natural_text(text: str) -> str:
    """One string that sorts as :func:`natural_key` does (one object per case, not a list):
    each text run is followed by NUL (so a shorter run sorts first, as in the list), each
    number is written as a character giving its digit count, then its digits."""
    out = []
    for i, t in enumerate(re.split(r"(\d+)", text)):
        if i % 2:
            d = str(int(t))
            out.append(chr(1 + len(d)) + d)
        else:
            out.append(t + "\0")
    return "".join(out)


def iter_cases(dataset: Dataset, max_cases: int | None = None) -> Iterator[CaseRef]:
    """The cases of ``dataset`` in natural order of their names (:func:`natural_key`), the
    first ``max_cases`` of them; made one at a time."""
    cases = dataset.cases
    if isinstance(cases, CaseList):
        order = cases.natural_order()
        n = len(order) if max_cases is None else min(len(order), max_cases)
        return (cases[order[i]] for i in range(n))
    refs = sorted(cases, key=lambda c: natural_key(c.case))
    return iter(refs if max_cases is None else refs[:max_cases])
