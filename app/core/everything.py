"""Segment everything: SAM's automatic mask generator over any :class:`PromptableModel`.

A regular grid of single positive points (``grid`` points per side, at pixel centres of the
model-input image) is decoded on one embedding; each point gives K candidate masks, which are
kept when confident (predicted IoU >= ``pred_iou_thresh``), stable (``stability_score`` >=
``stability_score_thresh``: the IoU of the mask thresholded at logit ``+offset`` and at
``-offset``) and large enough (``min_mask_region_area`` pixels); duplicates are removed by box
non-maximum suppression (``box_nms_thresh``, boxes scored by predicted IoU). The algorithm is
segment-anything's ``SamAutomaticMaskGenerator`` (Kirillov et al. 2023) without crops.

The defaults of the filters are written once, in :data:`DEFAULT_OPTIONS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_OPTIONS", "GRIDS", "check_options"]

#: points per side allowed for a grid (Mazurowski et al. Fig. 9 use 2^5, 2^6, 2^7)
GRIDS = (16, 32, 64, 128)

#: SAM's automatic-mask-generator filters (segment-anything's defaults but min area)
DEFAULT_OPTIONS: dict[str, float | int] = {
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
    "min_mask_region_area": 0,
    "points_per_batch": 64,
}


def check_options(options: Mapping[str, Any] | None) -> dict[str, float | int]:
    """``DEFAULT_OPTIONS`` updated with ``options``, checked.

    Raises
    ------
    ValueError
        An unknown key (the known ones listed) or a value out of range.
    """
    out = dict(DEFAULT_OPTIONS)
    for key, value in dict(options or {}).items():
        if key not in DEFAULT_OPTIONS:
            raise ValueError(f"unknown everything-mode option {key!r}; known: "
                             f"{', '.join(DEFAULT_OPTIONS)}")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"everything-mode option {key}: expected a number, "
                             f"got {value!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"everything-mode option {key}: expected a finite number, "
                             f"got {value!r}")
        if key in ("min_mask_region_area", "points_per_batch"):
            if v != int(v) or v < (1 if key == "points_per_batch" else 0):
                raise ValueError(f"everything-mode option {key}: expected a whole number "
                                 f">= {1 if key == 'points_per_batch' else 0}, got {value!r}")
            out[key] = int(v)
        else:
            if key == "stability_score_offset" and v < 0:
                raise ValueError(f"everything-mode option {key}: must be >= 0, got {value!r}")
            if key != "stability_score_offset" and not 0 <= v <= 1:
                raise ValueError(f"everything-mode option {key}: must be in [0, 1], "
                                 f"got {value!r}")
            out[key] = v
    return out
