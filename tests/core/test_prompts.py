"""Prompt simulation on hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.prompts import (
    components_by_size,
    derive_rng,
    farthest_from_boundary,
    jitter_box,
    mode_prompts,
    noc,
    paper_next_click,
    standard_next_click,
    tight_box,
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _square(shape, r0, c0, size):
    m = np.zeros(shape, bool)
    m[r0 : r0 + size, c0 : c0 + size] = True
    return m


def test_farthest_point_of_a_square_is_its_centre():
    m = _square((12, 14), 2, 3, 5)
    assert farthest_from_boundary(m, _rng()) == (4, 5)


def test_object_touching_the_border_is_padded():
    # without zero padding, the image edge would not count as boundary and the far column wins
    m = np.zeros((5, 9), bool)
    m[:, :5] = True  # touches top, bottom and left edges
    r, c = farthest_from_boundary(m, _rng())
    assert (r, c) == (2, 2)


def test_ties_are_broken_by_the_generator():
    m = np.zeros((6, 10), bool)
    m[2:4, 2:8] = True  # 2x6 bar: every pixel at distance 1
    ties = list(zip(*np.nonzero(m)))
    picks = {farthest_from_boundary(m, _rng(s)) for s in range(40)}
    assert picks <= set(ties) and len(picks) > 3
    # the draw is exactly rng.integers(0, n_ties) over the raster-ordered tie list
    expected = ties[int(np.random.default_rng(7).integers(0, len(ties)))]
    assert farthest_from_boundary(m, _rng(7)) == expected
    assert farthest_from_boundary(m, _rng(7)) == farthest_from_boundary(m, _rng(7))


def test_hole_does_not_attract_the_point():
    m = _square((11, 11), 1, 1, 9)
    m[4:7, 4:7] = False  # a 3x3 hole in the middle
    r, c = farthest_from_boundary(m, _rng())
    assert m[r, c]
    assert tight_box(m) == [1, 1, 9, 9]


def test_one_pixel_object():
    m = np.zeros((7, 7), bool)
    m[3, 5] = True
    assert farthest_from_boundary(m, _rng()) == (3, 5)
    mp = mode_prompts(m, 1, _rng())
    assert mp.points == [[5, 3, 1]]
    assert mode_prompts(m, 3, _rng()).boxes == [[5, 3, 5, 3]]


def test_components_are_8_connected_and_ordered_by_size_with_paper_ties():
    m = np.zeros((20, 20), bool)
    m[0:3, 0:3] = True  # A: 9 px, label 1
    m[10, 10] = True  # C: 1 px, first single pixel in raster order
    m[11, 11] = True  # diagonal neighbour: same component as (10,10) -> C has 2 px
    m[5:7, 15:17] = True  # B: 4 px
    m[15, 2] = True  # D: 1 px
    m[18, 18] = True  # E: 1 px (later in raster order than D)
    comps = components_by_size(m)
    assert [int(c.sum()) for c in comps] == [9, 4, 2, 1, 1]
    # equal sizes: the paper's sort (size, label) reversed puts the later label first
    assert comps[3][18, 18] and comps[4][15, 2]


def test_equal_size_components_order():
    m = _square((20, 20), 1, 1, 3) | _square((20, 20), 10, 10, 3)
    comps = components_by_size(m)
    assert comps[0][11, 11] and comps[1][2, 2]


def test_modes_on_three_components():
    m = np.zeros((30, 30), bool)
    m[2:7, 2:7] = True  # 25 px, centre (4, 4)
    m[20:23, 20:23] = True  # 9 px, centre (21, 21)
    m[10, 25] = True  # 1 px
    m[28, 1] = True  # 1 px (4th component: never used)
    rng = _rng()
    p1 = mode_prompts(m, 1, rng)
    assert p1.points == [[4, 4, 1]] and len(p1.prompts) == 1 and p1.boxes == []
    p2 = mode_prompts(m, 2, rng)
    # one call with three points, largest component first; the two 1-px ties: later label first
    assert len(p2.prompts) == 1
    assert p2.points == [[4, 4, 1], [21, 21, 1], [1, 28, 1]]
    np.testing.assert_array_equal(p2.prompts[0].points_xy, [[4, 4], [21, 21], [1, 28]])
    np.testing.assert_array_equal(p2.prompts[0].point_labels, [1, 1, 1])
    p3 = mode_prompts(m, 3, rng)
    assert p3.boxes == [[2, 2, 6, 6]] and len(p3.prompts) == 1
    p4 = mode_prompts(m, 4, rng)
    assert p4.boxes == [[2, 2, 6, 6], [20, 20, 22, 22], [1, 28, 1, 28]]
    assert len(p4.prompts) == 3  # predicted separately
    np.testing.assert_array_equal(p4.prompts[1].box_xyxy, [20, 20, 22, 22])
    p5 = mode_prompts(m, 5, rng)
    assert p5.boxes == [[1, 2, 25, 28]]  # inclusive corners of the whole mask


def test_mode_errors():
    with pytest.raises(ValueError, match="empty"):
        mode_prompts(np.zeros((4, 4), bool), 1, _rng())
    with pytest.raises(ValueError, match="mode"):
        mode_prompts(np.ones((4, 4), bool), 6, _rng())


def test_jitter_moves_prompts_reproducibly_and_stays_in_the_image():
    m = _square((64, 64), 20, 20, 20)
    a = mode_prompts(m, 3, derive_rng(1, "case"), jitter=0.1)
    b = mode_prompts(m, 3, derive_rng(1, "case"), jitter=0.1)
    assert a.boxes == b.boxes and a.boxes != [[20, 20, 39, 39]]
    for s in range(30):
        x0, y0, x1, y1 = jitter_box([0, 0, 63, 63], 0.5, _rng(s), (64, 64))
        assert 0 <= x0 <= x1 <= 63 and 0 <= y0 <= y1 <= 63
    exact = mode_prompts(m, 1, _rng(3)).points
    moved = mode_prompts(m, 1, _rng(3), jitter=0.1).points
    assert moved != exact and moved[0][2] == 1


def test_paper_clicks_follow_the_error_region():
    gt = _square((30, 30), 5, 5, 10)
    x, y, lab = paper_next_click(gt, None, _rng())
    assert lab == 1 and gt[y, x]
    # prediction with a big false-positive blob: the error region's farthest pixel is there
    pred = gt.copy()
    pred[18:29, 18:29] = True
    x, y, lab = paper_next_click(gt, pred, _rng())
    assert lab == 0 and not gt[y, x] and (y, x) == (23, 23)
    # prediction missing a part of the object: positive click inside the missing part
    pred = gt.copy()
    pred[5:15, 5:9] = False
    x, y, lab = paper_next_click(gt, pred, _rng())
    assert lab == 1 and 5 <= x <= 8
    # FN and FP are one region in the paper: a touching FN+FP band is measured together
    pred = np.zeros_like(gt)
    pred[5:15, 6:16] = True  # shifted right by one column: thin FN and FP strips
    x, y, lab = paper_next_click(gt, pred, _rng())
    assert (x == 5 and lab == 1) or (x == 15 and lab == 0)


def test_standard_clicks_fn_fp_separately_and_exclude_clicked_pixels():
    gt = _square((30, 30), 2, 2, 12)
    not_clicked = np.ones(gt.shape, bool)
    x, y, lab = standard_next_click(gt, None, not_clicked)
    assert lab == 1 and gt[y, x] and not not_clicked[y, x]
    # first raster pixel at the maximum (RITM takes coords[0])
    assert (y, x) == (7, 7)
    # FP blob (7x7) bigger than the FN strip (12x2): negative click in the FP blob
    pred = gt.copy()
    pred[:, 2:4] = False
    pred[20:27, 20:27] = True
    x, y, lab = standard_next_click(gt, pred, not_clicked)
    assert lab == 0 and (y, x) == (23, 23)
    # the same state again: that pixel is excluded, the next best is chosen
    x2, y2, lab2 = standard_next_click(gt, pred, not_clicked)
    assert (y2, x2) != (y, x)
    # equal FN and FP maxima: negative (RITM's strict comparison)
    gt2 = np.zeros((10, 10), bool)
    gt2[1, 1] = True
    pred2 = np.zeros((10, 10), bool)
    pred2[8, 8] = True
    assert standard_next_click(gt2, pred2, np.ones((10, 10), bool))[2] == 0


def test_noc():
    assert noc([0.5, 0.82, 0.91], 0.8) == 2
    assert noc([0.5, 0.82, 0.91], 0.9) == 3
    assert noc([0.5, 0.6], 0.9, max_clicks=20) == 20


def test_derived_generators_are_independent_of_order():
    a = derive_rng(5, "ds", "case1", "paper").integers(0, 1_000_000, 3)
    _ = derive_rng(5, "ds", "case0", "paper").integers(0, 10, 100)
    b = derive_rng(5, "ds", "case1", "paper").integers(0, 1_000_000, 3)
    c = derive_rng(6, "ds", "case1", "paper").integers(0, 1_000_000, 3)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


# --- COSMOS strategies -----------------------------------------------------------------------
def _ring_shape():
    """A thick C: non-convex, its moments centroid lies in the hole (outside the object)."""
    import cv2

    m = np.zeros((120, 120), np.uint8)
    cv2.circle(m, (60, 60), 45, 1, -1)
    cv2.circle(m, (60, 60), 25, 0, -1)
    m[50:70, 90:] = 0  # the gap of the C
    return m.astype(bool)


@pytest.fixture(scope="module")
def head_mask(shared_data):
    from PIL import Image

    path = shared_data / "png_pairs" / "fetal_head_us" / "masks" / "006_HC.png"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return np.asarray(Image.open(path)) > 127


def test_cosmos_names_parse_and_bad_ones_are_refused():
    from app.core.prompts import parse_cosmos

    assert parse_cosmos("paper") is None
    s = parse_cosmos("cosmos-5pos5neg")
    assert (s.n_pos, s.n_neg, s.box) == (5, 5, False)
    assert parse_cosmos("cosmos-box-centroid").box and parse_cosmos("cosmos-box").n_pos == 0
    for bad in ("cosmos-0pos", "cosmos-21pos", "cosmos-3pos0neg", "cosmos-middle"):
        with pytest.raises(ValueError, match="cosmos"):
            parse_cosmos(bad)


def test_cosmos_centroid_is_the_moments_centroid_even_outside_the_object(head_mask):
    import cv2

    from app.core.prompts import cosmos_prompts

    for mask, inside in ((_ring_shape(), False), (head_mask, True)):
        mom = cv2.moments(mask.astype(np.uint8), binaryImage=True)
        cx, cy = mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]
        mp = cosmos_prompts(mask, "cosmos-centroid", _rng())
        assert mp.points == [[round(cx), round(cy), 1]] and mp.boxes == []
        assert bool(mask[round(cy), round(cx)]) is inside
        assert len(mp.prompts) == 1 and not mp.prompts[0].has_box


def test_cosmos_positive_and_negative_points_against_the_ground_truth(head_mask):
    import cv2

    from app.core.prompts import centroid_xy, cosmos_prompts, outer_ring

    ring = outer_ring(head_mask)
    for seed in range(5):
        mp = cosmos_prompts(head_mask, "cosmos-5pos5neg", _rng(seed))
        pos = [p for p in mp.points if p[2] == 1]
        neg = [p for p in mp.points if p[2] == 0]
        assert len(pos) == 5 and len(neg) == 5
        cx, cy = centroid_xy(head_mask)
        assert pos[0][:2] == [round(cx), round(cy)]
        assert all(head_mask[y, x] for x, y, _ in pos[1:])
        assert not any(head_mask[y, x] for x, y, _ in neg)
        assert all(ring[y, x] for x, y, _ in neg)  # from a ring around the object, not far
        p = mp.prompts[0]
        assert p.point_labels.tolist() == [1] * 5 + [0] * 5
    # the ring is near: every negative within its width of the object
    dist = cv2.distanceTransform((~head_mask).astype(np.uint8), cv2.DIST_L2, 5)
    width = max(3, round(0.1 * 2 * np.sqrt(head_mask.sum() / np.pi)))
    assert dist[ring].max() <= width


def test_cosmos_boxes_are_tight(head_mask):
    from app.core.prompts import cosmos_prompts

    box = tight_box(head_mask)
    assert cosmos_prompts(head_mask, "cosmos-box", _rng()).boxes == [box]
    mp = cosmos_prompts(head_mask, "cosmos-box-centroid", _rng())
    assert mp.boxes == [box] and len(mp.points) == 1 and mp.prompts[0].has_box


def test_cosmos_jitter_is_bounded_and_reproducible(head_mask):
    from app.core.prompts import cosmos_prompts

    x0, y0, x1, y1 = tight_box(head_mask)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    exact = cosmos_prompts(head_mask, "cosmos-box-centroid", _rng())
    (ex, ey, _), eb = exact.points[0], exact.boxes[0]
    moved = set()
    for seed in range(40):
        mp = cosmos_prompts(head_mask, "cosmos-box-centroid", derive_rng(seed, "j"), jitter=0.1)
        (x, y, lab), b = mp.points[0], mp.boxes[0]
        assert lab == 1
        assert abs(x - ex) <= 0.1 * w + 0.5 and abs(y - ey) <= 0.1 * h + 0.5
        for k, size in zip(range(4), (w, h, w, h)):
            assert abs(b[k] - eb[k]) <= 0.1 * size + 0.5
        moved.add((x, y, *b))
        again = cosmos_prompts(head_mask, "cosmos-box-centroid", derive_rng(seed, "j"),
                               jitter=0.1)
        assert again.points == mp.points and again.boxes == mp.boxes
    assert len(moved) == 40  # every draw moved it somewhere else
