"""Prompt simulation exactly as Mazurowski et al. 2023 did it, plus the RITM click protocol.

What the paper's published code (``prompt_gen_and_exec_v1.py`` / ``_v2_allmode.py``) does, and
what this module reproduces:

* **Components**: ``skimage.measure.label(mask, connectivity=2)`` (8-connectivity). They are
  ordered by size, largest first. Equal sizes keep the paper's order: it sorts ``(size, label)``
  ascending and reverses, so among equal sizes the *higher* label (the one whose first pixel
  comes later in raster order) comes first.
* **Farthest-from-boundary point**: the binary region is zero-padded by one pixel,
  ``cv2.distanceTransform(padded, cv2.DIST_L2, 5)`` is taken and the padding cropped; among the
  pixels at the maximum distance one is drawn with ``rng.integers(0, n)`` (the paper uses
  ``np.random.randint`` after ``np.random.seed(1)``; we use a seeded ``np.random.Generator``).
  A draw is made even when there is a single maximum, as in the paper.
* **Modes** (numbered 1-5 here; 0-4 in the paper's code):

  1. one positive point on the largest component;
  2. one positive point per component, up to 3 (largest first), all in **one** call;
  3. a tight box around the largest component;
  4. one tight box per component, up to 3, each predicted **separately**, masks united
     (candidate ``k`` of each box united with candidate ``k`` of the others, as the paper's
     ``preds += preds_single``);
  5. a tight box around the whole mask.

  Boxes are inclusive pixel corners ``[x0, y0, x1, y1]`` (``x1`` = last object column).
* **Iterative clicking, ``paper``** (Algorithm 1): first click at the farthest pixel of the whole
  mask; each next click at the farthest pixel of the error region ``gt XOR prediction`` (false
  negatives and false positives together), positive when ``gt`` is set there; every step re-sends
  all clicks, no previous mask is fed back. When the prediction is perfect the error region is
  empty and the paper's code picks a random pixel of the image (all pixels tie at distance 0);
  so does :func:`paper_next_click`.
* **Iterative clicking, ``standard``** (RITM's ``Clicker``, used by SimpleClick and FocalClick):
  false-negative and false-positive regions are measured separately with the *precise* L2
  distance transform (``maskSize=0``) on zero-padded masks, already-clicked pixels are excluded,
  the larger maximum wins (positive only when the FN maximum is strictly larger), the first pixel
  in raster order at that maximum is taken; the previous low-res logits are fed back; clicking
  stops at the target IoU or after ``max_clicks`` (20). NoC@t is the first click reaching IoU t,
  ``max_clicks`` when never reached (a failure).

Coordinates follow :class:`app.core.models.base.Prompt`: ``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from app.core.models.base import Prompt

__all__ = [
    "MODES",
    "PROTOCOLS",
    "ModePrompts",
    "components_by_size",
    "farthest_from_boundary",
    "tight_box",
    "mode_prompts",
    "jitter_points",
    "jitter_box",
    "paper_next_click",
    "standard_next_click",
    "noc",
    "derive_rng",
    "CosmosStrategy",
    "parse_cosmos",
    "is_iterative",
    "outer_ring",
    "centroid_xy",
    "cosmos_prompts",
]

#: The paper's five prompt modes.
MODES = (1, 2, 3, 4, 5)
#: Iterative clicking protocols.
PROTOCOLS = ("paper", "standard")
#: Most points of one sign a COSMOS strategy may ask for.
COSMOS_MAX_POINTS = 20


@dataclass(frozen=True)
class CosmosStrategy:
    """One of COSMOS's (Huang et al. 2023) prompt strategies, parsed from its protocol name.

    Names: ``cosmos-centroid``, ``cosmos-box``, ``cosmos-box-centroid``, ``cosmos-{N}pos``,
    ``cosmos-{N}pos{M}neg`` (N, M in 1..20; e.g. ``cosmos-5pos5neg``).

    Attributes
    ----------
    name : str
    n_pos, n_neg : int
        Positive / negative points (the first positive point is the centroid).
    box : bool
        A tight box of the whole object.
    """

    name: str
    n_pos: int
    n_neg: int
    box: bool


def parse_cosmos(name: str) -> CosmosStrategy | None:
    """The strategy a protocol name stands for; None when it is not a COSMOS name.

    Raises
    ------
    ValueError
        A ``cosmos-`` name that is malformed or asks for 0 or more than 20 points.
    """
    import re

    if not isinstance(name, str) or not name.startswith("cosmos-"):
        return None
    fixed = {"cosmos-centroid": (1, 0, False), "cosmos-box": (0, 0, True),
             "cosmos-box-centroid": (1, 0, True)}
    if name in fixed:
        return CosmosStrategy(name, *fixed[name])
    m = re.fullmatch(r"cosmos-(\d+)pos(?:(\d+)neg)?", name)
    if m is None:
        raise ValueError(
            f"unknown COSMOS strategy {name!r}; use cosmos-centroid, cosmos-box, "
            "cosmos-box-centroid, cosmos-{N}pos or cosmos-{N}pos{M}neg (N, M in 1..20)")
    n_pos, n_neg = int(m.group(1)), int(m.group(2) or 0)
    for n, what in ((n_pos, "positive"), (n_neg if m.group(2) else 1, "negative")):
        if not 1 <= n <= COSMOS_MAX_POINTS:
            raise ValueError(f"COSMOS strategy {name!r}: {n} {what} points; "
                             f"1..{COSMOS_MAX_POINTS} allowed")
    return CosmosStrategy(name, n_pos, n_neg, False)


def is_iterative(protocol: str) -> bool:
    """Whether ``protocol`` is an iterative click protocol (one results group per selection)."""
    return protocol in PROTOCOLS


def derive_rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``keys`` (e.g. dataset, case, protocol).

    Each unit of work gets its own stream, so results do not depend on which other cases, modes
    or methods ran before: a resumed or filtered run draws exactly the same tie-breaks.
    """
    text = "\x1f".join(str(k) for k in keys).encode("utf-8")
    digest = hashlib.sha256(text).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *words])


def components_by_size(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of ``mask``, largest first (ties as the paper orders them).

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)

    Returns
    -------
    list of ndarray of bool, shape (H, W)
        One mask per component.
    """
    from skimage.measure import label

    labels, n = label(np.asarray(mask, bool), connectivity=2, return_num=True)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    # paper: sorted(zip(ratio, id)) then reversed -> size descending, label descending on ties
    order = sorted(range(1, n + 1), key=lambda i: (sizes[i - 1], i), reverse=True)
    return [labels == i for i in order]


def _distance_map(mask: np.ndarray, mask_size: int) -> np.ndarray:
    padded = np.pad(np.asarray(mask, np.uint8), ((1, 1), (1, 1)), mode="constant")
    dist = cv2.distanceTransform(padded, distanceType=cv2.DIST_L2, maskSize=mask_size)
    return dist.astype(np.float32)[1:-1, 1:-1]


def farthest_from_boundary(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """Return the ``(row, col)`` of the pixel farthest from the mask's boundary.

    OpenCV L2 distance transform with a 5x5 mask on the zero-padded mask, as the paper.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        May be empty: then every pixel ties at distance 0 (the paper's behaviour).
    rng : Generator
        Breaks ties between equally distant pixels (one draw, always).
    """
    dist = _distance_map(mask, 5)
    rows, cols = np.where(dist == dist.max())
    k = int(rng.integers(0, len(cols)))
    return int(rows[k]), int(cols[k])


def tight_box(mask: np.ndarray) -> list[int]:
    """Inclusive bounding box ``[x0, y0, x1, y1]`` of a non-empty mask (shape (H, W))."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("tight_box: the mask is empty")
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


@dataclass(frozen=True)
class ModePrompts:
    """The prompts of one mode for one mask.

    Attributes
    ----------
    mode : int
        1-5; 0 for a COSMOS strategy (:func:`cosmos_prompts`).
    prompts : tuple of Prompt
        Predicted **separately**; the resulting masks are united (one element except mode 4).
    points : list of [x, y, label]
        All points, for the results table.
    boxes : list of [x0, y0, x1, y1]
        All boxes (inclusive corners), for the results table.
    """

    mode: int
    prompts: tuple[Prompt, ...]
    points: list[list[int]]
    boxes: list[list[int]]

    @property
    def uses_points_only(self) -> bool:
        return self.mode in (1, 2)


def _clip_xy(x: float, y: float, shape: tuple[int, int]) -> tuple[int, int]:
    h, w = shape
    return int(np.clip(round(x), 0, w - 1)), int(np.clip(round(y), 0, h - 1))


def jitter_points(
    points_xy: Sequence[Sequence[float]],
    object_boxes: Sequence[Sequence[int]],
    fraction: float,
    rng: np.random.Generator,
    shape: tuple[int, int],
) -> list[tuple[int, int]]:
    """Move each point by Gaussian noise with sd ``fraction`` x its object's box width/height.

    Parameters
    ----------
    points_xy : sequence of (x, y)
    object_boxes : sequence of [x0, y0, x1, y1]
        The box of the component each point belongs to (sets the noise scale).
    fraction : float
        Standard deviation as a fraction of the object's width (x) and height (y).
    shape : (H, W)
        Results are rounded and clipped to the image.
    """
    out = []
    for (x, y), (x0, y0, x1, y1) in zip(points_xy, object_boxes):
        dx = rng.normal(0.0, fraction * (x1 - x0 + 1))
        dy = rng.normal(0.0, fraction * (y1 - y0 + 1))
        out.append(_clip_xy(x + dx, y + dy, shape))
    return out


def jitter_box(
    box_xyxy: Sequence[int], fraction: float, rng: np.random.Generator, shape: tuple[int, int]
) -> list[int]:
    """Move each box edge by Gaussian noise with sd ``fraction`` x the box width (x) / height (y).

    The result is rounded, clipped to the ``shape`` (H, W) image and re-ordered if edges crossed.
    """
    x0, y0, x1, y1 = box_xyxy
    w, h = x1 - x0 + 1, y1 - y0 + 1
    nx0, nx1 = (x + rng.normal(0.0, fraction * w) for x in (x0, x1))
    ny0, ny1 = (y + rng.normal(0.0, fraction * h) for y in (y0, y1))
    ax, ay = _clip_xy(min(nx0, nx1), min(ny0, ny1), shape)
    bx, by = _clip_xy(max(nx0, nx1), max(ny0, ny1), shape)
    return [ax, ay, bx, by]


def mode_prompts(
    mask: np.ndarray,
    mode: int,
    rng: np.random.Generator,
    *,
    jitter: float = 0.0,
    max_components: int = 3,
) -> ModePrompts:
    """The prompts of ``mode`` (1-5) for a binary ground-truth mask, as the paper makes them.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Non-empty.
    mode : int
        1 = point on the largest component; 2 = a point on each of up to 3 components in one
        call; 3 = box of the largest component; 4 = a box per component (up to 3) predicted
        separately; 5 = box of the whole mask.
    rng : Generator
        Breaks ties of the farthest-from-boundary point; draws the jitter.
    jitter : float
        Standard deviation of prompt noise as a fraction of the object's size (0 = exact).
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mode_prompts expects a 2D mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("mode_prompts: the ground-truth mask is empty")
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; modes are 1-5")
    shape = mask.shape
    if mode == 5:
        comps = [mask]
    else:
        comps = components_by_size(mask)[: 1 if mode in (1, 3) else max_components]

    if mode in (1, 2):
        pts = []
        for comp in comps:
            r, c = farthest_from_boundary(comp, rng)
            pts.append((c, r))
        if jitter > 0:
            pts = jitter_points(pts, [tight_box(c) for c in comps], jitter, rng, shape)
        points = [[int(x), int(y), 1] for x, y in pts]
        prompt = Prompt.from_points([p[:2] for p in points], [1] * len(points))
        return ModePrompts(mode, (prompt,), points, [])

    boxes = [tight_box(c) for c in comps]
    if jitter > 0:
        boxes = [jitter_box(b, jitter, rng, shape) for b in boxes]
    prompts = tuple(Prompt.from_box(b) for b in boxes)
    return ModePrompts(mode, prompts, [], boxes)


def paper_next_click(
    gt: np.ndarray, pred: np.ndarray | None, rng: np.random.Generator
) -> tuple[int, int, int]:
    """Next click of the paper's Algorithm 1: farthest pixel of the error region.

    Parameters
    ----------
    gt : ndarray of bool, shape (H, W)
    pred : ndarray of bool, shape (H, W), or None
        The selected mask of the previous step; ``None`` for the first click (which then goes
        to the farthest pixel of the whole ``gt``).
    rng : Generator

    Returns
    -------
    (x, y, label)
        ``label`` is 1 when ``gt`` is set at the click, else 0.
    """
    gt = np.asarray(gt, bool)
    region = gt if pred is None else np.logical_xor(gt, np.asarray(pred, bool))
    r, c = farthest_from_boundary(region, rng)
    return c, r, int(gt[r, c])


def standard_next_click(
    gt: np.ndarray, pred: np.ndarray | None, not_clicked: np.ndarray
) -> tuple[int, int, int]:
    """Next click of the RITM/SimpleClick protocol.

    Parameters
    ----------
    gt : ndarray of bool, shape (H, W)
    pred : ndarray of bool, shape (H, W), or None (no prediction yet: all false)
    not_clicked : ndarray of bool, shape (H, W)
        False where a click was already placed; **updated in place** with the new click.

    Returns
    -------
    (x, y, label)
        ``label`` 1 (false-negative region won) or 0 (false-positive region won or tie).
    """
    gt = np.asarray(gt, bool)
    pred = np.zeros_like(gt) if pred is None else np.asarray(pred, bool)
    fn = gt & ~pred
    fp = ~gt & pred
    fn_dt = _distance_map(fn, 0) * not_clicked
    fp_dt = _distance_map(fp, 0) * not_clicked
    fn_max, fp_max = float(fn_dt.max()), float(fp_dt.max())
    positive = fn_max > fp_max
    dt, best = (fn_dt, fn_max) if positive else (fp_dt, fp_max)
    rows, cols = np.nonzero(dt == best)
    r, c = int(rows[0]), int(cols[0])
    not_clicked[r, c] = False
    return c, r, int(positive)


def noc(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach ``threshold`` IoU (``ious[k]`` is after click k+1).

    ``max_clicks`` when never reached, as RITM's ``compute_noc_metric``.
    """
    arr = np.asarray(ious, float) >= threshold
    return int(np.argmax(arr)) + 1 if arr.any() else int(max_clicks)


# --- COSMOS (Huang et al. 2023) prompt strategies ---------------------------------------------
def outer_ring(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """The pixels outside ``mask`` within ``width`` px of it (L2): where COSMOS-style negative
    points are drawn and where the difficulty factor ``contrast`` measures the surroundings.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
    width : int, optional
        Default ``max(3, round(0.1 x the object's equivalent diameter))``.

    Returns
    -------
    ndarray of bool, shape (H, W)
        Never overlaps ``mask``; empty when ``mask`` is empty or fills the image.
    """
    m = np.asarray(mask, bool)
    if not m.any() or m.all():
        return np.zeros_like(m)
    if width is None:
        width = max(3, int(round(0.1 * 2.0 * np.sqrt(m.sum() / np.pi))))
    dist = cv2.distanceTransform((~m).astype(np.uint8), cv2.DIST_L2, 5)
    return (~m) & (dist <= float(width))


def centroid_xy(mask: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` centroid of a non-empty binary mask by image moments (``cv2.moments``), as
    COSMOS's released code places its first positive point; it can fall outside a non-convex
    object."""
    mom = cv2.moments(np.asarray(mask, np.uint8), binaryImage=True)
    if mom["m00"] == 0:
        raise ValueError("centroid_xy: the mask is empty")
    return mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]


def _uniform_shift(xy: tuple[float, float], box: Sequence[int], fraction: float,
                   rng: np.random.Generator, shape: tuple[int, int]) -> tuple[int, int]:
    x0, y0, x1, y1 = box
    dx = rng.uniform(-fraction, fraction) * (x1 - x0 + 1)
    dy = rng.uniform(-fraction, fraction) * (y1 - y0 + 1)
    return _clip_xy(xy[0] + dx, xy[1] + dy, shape)


def cosmos_prompts(mask: np.ndarray, strategy: str | CosmosStrategy, rng: np.random.Generator,
                   *, jitter: float = 0.0, ring_width: int | None = None) -> ModePrompts:
    """The prompt of a COSMOS strategy for one ground-truth object, as **one** call.

    * positive point 1: the moments centroid of the whole mask (:func:`centroid_xy`), kept
      where it falls, inside the object or not;
    * positive points 2..N: object pixels drawn uniformly without replacement;
    * negative points: pixels of :func:`outer_ring` drawn uniformly without replacement;
    * box: the tight box of the whole mask (inclusive corners).

    The randomness test (``jitter`` > 0): every point, and each box edge, moves by a uniform
    draw in ``[-jitter, +jitter]`` x the object's box width (x) / height (y), then is rounded
    and clipped to the image (so a move is bounded, unlike the five modes' Gaussian jitter).
    Labels stay as drawn (a moved negative may land on the object).

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Non-empty.
    strategy : str or CosmosStrategy
        ``cosmos-centroid``, ``cosmos-box``, ``cosmos-box-centroid``, ``cosmos-{N}pos``,
        ``cosmos-{N}pos{M}neg``.
    rng : Generator
    jitter : float
    ring_width : int, optional
        See :func:`outer_ring`.

    Returns
    -------
    ModePrompts
        ``mode`` 0, one prompt; ``points`` ``[x, y, label]`` (label 0 = negative), ``boxes``.
    """
    st = parse_cosmos(strategy) if isinstance(strategy, str) else strategy
    if st is None:
        raise ValueError(f"not a COSMOS strategy: {strategy!r}")
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"cosmos_prompts needs a non-empty 2D mask, got shape {mask.shape}")
    shape = mask.shape
    box = tight_box(mask)
    pts: list[tuple[float, float, int]] = []
    if st.n_pos:
        cx, cy = centroid_xy(mask)
        pts.append((cx, cy, 1))
        if st.n_pos > 1:
            rows, cols = np.nonzero(mask)
            k = st.n_pos - 1
            pick = rng.choice(len(rows), size=k, replace=k > len(rows))
            pts.extend((float(cols[i]), float(rows[i]), 1) for i in pick)
    if st.n_neg:
        ring = outer_ring(mask, ring_width)
        if not ring.any():
            ring = ~mask
        rows, cols = np.nonzero(ring)
        if len(rows):
            pick = rng.choice(len(rows), size=st.n_neg, replace=st.n_neg > len(rows))
            pts.extend((float(cols[i]), float(rows[i]), 0) for i in pick)
    if jitter > 0:
        pts = [(*_uniform_shift((x, y), box, jitter, rng, shape), lab) for x, y, lab in pts]
    points = [[*_clip_xy(x, y, shape), int(lab)] for x, y, lab in pts]
    boxes: list[list[int]] = []
    if st.box:
        b = box
        if jitter > 0:
            w, h = b[2] - b[0] + 1, b[3] - b[1] + 1
            e = [b[0] + rng.uniform(-jitter, jitter) * w, b[1] + rng.uniform(-jitter, jitter) * h,
                 b[2] + rng.uniform(-jitter, jitter) * w, b[3] + rng.uniform(-jitter, jitter) * h]
            ax, ay = _clip_xy(min(e[0], e[2]), min(e[1], e[3]), shape)
            bx, by = _clip_xy(max(e[0], e[2]), max(e[1], e[3]), shape)
            b = [ax, ay, bx, by]
        boxes = [list(map(int, b))]
    prompt = Prompt(points_xy=np.array([p[:2] for p in points], np.float32).reshape(-1, 2),
                    point_labels=np.array([p[2] for p in points], np.int32),
                    box_xyxy=None if not boxes else np.asarray(boxes[0], np.float32))
    return ModePrompts(0, (prompt,), points, boxes)
