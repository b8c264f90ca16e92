"""Tests for vitpose_core.keypoint_sets: structural invariants and known facts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vitpose_core.keypoint_sets import (
    AIC,
    AP10K,
    APT36K,
    CENTER_COLOR,
    COCO,
    COCO_WHOLEBODY,
    KEYPOINT_SETS,
    LEFT_COLOR,
    MPII,
    RIGHT_COLOR,
    VITPOSE_PLUS_DATASETS,
    KeypointSet,
    get_keypoint_set,
)

ALL_SETS = [COCO, COCO_WHOLEBODY, MPII, AIC, AP10K, APT36K]
ids = [ks.name for ks in ALL_SETS]


def _mirror_name(name: str) -> str | None:
    """Mirrored name for names with a side marker, else None."""
    for a, b in (("left_", "right_"), ("right_", "left_"), ("l_", "r_"), ("r_", "l_")):
        if name.startswith(a):
            return b + name[len(a):]
    return None


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("ks", ALL_SETS, ids=ids)
def test_lengths_consistent(ks: KeypointSet) -> None:
    k = ks.num_keypoints
    assert k == len(ks.keypoint_names)
    assert len(ks.sigmas) == k
    assert len(ks.keypoint_colors) == k
    assert len(ks.edge_colors) == len(ks.skeleton)
    assert len(ks.skeleton) > 0


@pytest.mark.parametrize("ks", ALL_SETS, ids=ids)
def test_names_unique_and_wellformed(ks: KeypointSet) -> None:
    assert len(set(ks.keypoint_names)) == ks.num_keypoints
    assert all(isinstance(n, str) and n == n.strip() and n for n in ks.keypoint_names)


@pytest.mark.parametrize("ks", ALL_SETS, ids=ids)
def test_values_in_range(ks: KeypointSet) -> None:
    k = ks.num_keypoints
    assert all(isinstance(s, float) and 0.0 < s < 0.5 for s in ks.sigmas)
    for a, b in ks.skeleton:
        assert 0 <= a < k and 0 <= b < k
        assert a != b, f"self-edge at {a}"
    # Duplicate (undirected) edges would just be drawn twice: a table typo.
    undirected = {frozenset(e) for e in ks.skeleton}
    assert len(undirected) == len(ks.skeleton)
    for a, b in ks.flip_pairs:
        assert 0 <= a < k and 0 <= b < k and a != b
    for c in ks.keypoint_colors + ks.edge_colors:
        assert len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)


@pytest.mark.parametrize("ks", ALL_SETS, ids=ids)
def test_flip_pairs_disjoint(ks: KeypointSet) -> None:
    flat = [i for pair in ks.flip_pairs for i in pair]
    assert len(flat) == len(set(flat))


@pytest.mark.parametrize("ks", ALL_SETS, ids=ids)
def test_flip_permutation_is_involution(ks: KeypointSet) -> None:
    perm = ks.flip_permutation()
    assert isinstance(perm, list)
    assert sorted(perm) == list(range(ks.num_keypoints))
    assert [perm[p] for p in perm] == list(range(ks.num_keypoints))
    moved = {i for i, p in enumerate(perm) if p != i}
    assert moved == {i for pair in ks.flip_pairs for i in pair}
    # Flipping twice through numpy indexing (as flip-test does) is identity.
    heat = np.arange(ks.num_keypoints * 3).reshape(ks.num_keypoints, 3)
    np.testing.assert_array_equal(heat[perm][perm], heat)


@pytest.mark.parametrize("ks", ALL_SETS, ids=ids)
def test_flip_partner_is_mirrored_name(ks: KeypointSet) -> None:
    perm = ks.flip_permutation()
    names = ks.keypoint_names
    index = {n: i for i, n in enumerate(names)}
    checked = 0
    for i, name in enumerate(names):
        mirrored = _mirror_name(name)
        if mirrored is not None:
            assert mirrored in index, f"{name} has no mirrored keypoint"
            assert names[perm[i]] == mirrored, f"{name} flips to {names[perm[i]]}"
            checked += 1
        elif not name.startswith("face-"):
            # Names without a side marker are on the midline.
            assert perm[i] == i, f"centre keypoint {name} is flipped"
    assert checked == 2 * sum(
        1 for a, _ in ks.flip_pairs if not names[a].startswith("face-")
    )


@pytest.mark.parametrize("ks", ALL_SETS, ids=ids)
def test_colours_follow_side_convention(ks: KeypointSet) -> None:
    assert len({LEFT_COLOR, RIGHT_COLOR, CENTER_COLOR}) == 3
    for a, b in ks.flip_pairs:
        ca, cb = ks.keypoint_colors[a], ks.keypoint_colors[b]
        if ks.keypoint_names[a].startswith("face-"):
            assert ca == cb == CENTER_COLOR
        else:
            assert {ca, cb} == {LEFT_COLOR, RIGHT_COLOR}
    for i, name in enumerate(ks.keypoint_names):
        side = _mirror_name(name)
        if side is None:
            assert ks.keypoint_colors[i] == CENTER_COLOR
        elif name.startswith(("left_", "l_")):
            assert ks.keypoint_colors[i] == LEFT_COLOR
        else:
            assert ks.keypoint_colors[i] == RIGHT_COLOR
    # Mirrored edges get mirrored colours.
    perm = ks.flip_permutation()
    edge_color = {frozenset(e): c for e, c in zip(ks.skeleton, ks.edge_colors)}
    swap = {LEFT_COLOR: RIGHT_COLOR, RIGHT_COLOR: LEFT_COLOR, CENTER_COLOR: CENTER_COLOR}
    for (a, b), c in zip(ks.skeleton, ks.edge_colors):
        mirrored = frozenset((perm[a], perm[b]))
        if mirrored in edge_color:
            assert edge_color[mirrored] == swap[c]


@pytest.mark.parametrize("ks", ALL_SETS, ids=ids)
def test_skeleton_connected(ks: KeypointSet) -> None:
    # Every non-face keypoint is reachable from keypoint 0 in the drawing.
    adj: dict[int, set[int]] = {i: set() for i in range(ks.num_keypoints)}
    for a, b in ks.skeleton:
        adj[a].add(b)
        adj[b].add(a)
    seen, stack = {0}, [0]
    while stack:
        for j in adj[stack.pop()] - seen:
            seen.add(j)
            stack.append(j)
    expected = {i for i, n in enumerate(ks.keypoint_names) if not n.startswith("face-")}
    assert expected <= seen


def test_dataclass_is_frozen() -> None:
    with pytest.raises(AttributeError):
        COCO.name = "other"  # type: ignore[misc]


def test_constructor_rejects_inconsistent_tables() -> None:
    with pytest.raises(ValueError):
        KeypointSet("bad", ("a", "b"), ((0, 1),), ((0, 1),), (0.1,), ((0, 0, 0),) * 2, ((0, 0, 0),))
    with pytest.raises(ValueError):
        KeypointSet("bad", ("a", "b"), ((0, 1),), ((1, 1),), (0.1, 0.1), ((0, 0, 0),) * 2, ((0, 0, 0),))
    with pytest.raises(ValueError):
        KeypointSet("bad", ("a", "b", "c"), ((0, 1), (1, 2)), ((0, 1),), (0.1,) * 3, ((0, 0, 0),) * 3, ((0, 0, 0),))


# ---------------------------------------------------------------- COCO


def test_coco_names_and_order() -> None:
    assert COCO.keypoint_names == (
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
        "left_wrist", "right_wrist", "left_hip", "right_hip",
        "left_knee", "right_knee", "left_ankle", "right_ankle",
    )  # fmt: skip
    assert set(COCO.flip_pairs) == {(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)}


def test_coco_sigmas_match_pycocotools() -> None:
    from pycocotools.cocoeval import Params

    ref = Params(iouType="keypoints").kpt_oks_sigmas
    assert len(ref) == 17
    np.testing.assert_allclose(np.asarray(COCO.sigmas), ref, rtol=0, atol=1e-12)


def test_coco_skeleton_is_standard() -> None:
    # The 1-based skeleton shipped in COCO's person_keypoints annotations.
    one_based = [
        [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13],
        [6, 7], [6, 8], [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3],
        [2, 4], [3, 5], [4, 6], [5, 7],
    ]  # fmt: skip
    expected = {frozenset((a - 1, b - 1)) for a, b in one_based}
    assert {frozenset(e) for e in COCO.skeleton} == expected


# ---------------------------------------------------------------- whole-body


def test_wholebody_layout() -> None:
    names = COCO_WHOLEBODY.keypoint_names
    assert COCO_WHOLEBODY.num_keypoints == 133
    assert names[17:23] == (
        "left_big_toe", "left_small_toe", "left_heel",
        "right_big_toe", "right_small_toe", "right_heel",
    )  # fmt: skip
    assert names[23:91] == tuple(f"face-{i}" for i in range(68))
    assert names[91] == "left_hand_root" and names[112] == "right_hand_root"
    assert names[92:96] == tuple(f"left_thumb{j}" for j in range(1, 5))
    assert names[129:133] == tuple(f"right_pinky_finger{j}" for j in range(1, 5))


def test_wholebody_body_part_matches_coco() -> None:
    wb = COCO_WHOLEBODY
    assert wb.keypoint_names[:17] == COCO.keypoint_names
    assert wb.sigmas[:17] == COCO.sigmas
    body_pairs = {p for p in wb.flip_pairs if max(p) < 17}
    assert body_pairs == set(COCO.flip_pairs)
    # No pair crosses between parts (body/foot/face/hands).
    for a, b in wb.flip_pairs:
        assert (a < 17) == (b < 17)
    body_edges = {frozenset(e) for e in wb.skeleton if max(e) < 17}
    assert body_edges == {frozenset(e) for e in COCO.skeleton}


def test_wholebody_official_sigmas() -> None:
    s = np.asarray(COCO_WHOLEBODY.sigmas)
    np.testing.assert_allclose(s[17:23], [0.068, 0.066, 0.066, 0.092, 0.094, 0.094])
    # Spot values of the official face table (start, chin, 0.034 outlier, end).
    np.testing.assert_allclose(s[[23, 31, 70, 90]], [0.042, 0.020, 0.034, 0.008])
    hand = [0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018,
            0.024, 0.022, 0.026, 0.017, 0.021, 0.021, 0.032, 0.020, 0.019, 0.022, 0.031]  # fmt: skip
    np.testing.assert_allclose(s[91:112], hand)
    np.testing.assert_allclose(s[112:133], hand)
    # Checksums of the official 68-entry face table: the plain sum catches a
    # typo'd value, the index-weighted one a shifted/swapped entry.
    face = s[23:91]
    assert face.sum() == pytest.approx(1.137, abs=1e-9)
    assert (np.arange(68) * face).sum() == pytest.approx(26.208, abs=1e-9)
    assert s.sum() == pytest.approx(3.861, abs=1e-9)


def test_wholebody_hand_pairs() -> None:
    pairs = set(COCO_WHOLEBODY.flip_pairs)
    for k in range(21):
        assert (91 + k, 112 + k) in pairs


def test_wholebody_face_pairs() -> None:
    face = {(a - 23, b - 23) for a, b in COCO_WHOLEBODY.flip_pairs if 23 <= a < 91}
    assert len(face) == 29
    perm = COCO_WHOLEBODY.flip_permutation()
    centre = {i for i in range(68) if perm[23 + i] == 23 + i}
    assert centre == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}
    for i in range(8):  # jaw contour runs 0..16 around the chin
        assert perm[23 + i] == 23 + 16 - i
    for a, b in [(17, 26), (21, 22), (31, 35), (36, 45), (39, 42), (40, 47), (48, 54), (60, 64), (65, 67)]:
        assert perm[23 + a] == 23 + b


def test_wholebody_skeleton_has_feet_and_hands() -> None:
    names = COCO_WHOLEBODY.keypoint_names
    edges = {frozenset((names[a], names[b])) for a, b in COCO_WHOLEBODY.skeleton}
    for side in ("left", "right"):
        for toe in ("big_toe", "small_toe", "heel"):
            assert frozenset((f"{side}_ankle", f"{side}_{toe}")) in edges
        for finger in ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger"):
            for j in range(1, 4):
                assert frozenset((f"{side}_{finger}{j}", f"{side}_{finger}{j + 1}")) in edges
    hand_edges = [e for e in COCO_WHOLEBODY.skeleton if min(e) >= 91]
    assert len(hand_edges) == 40  # 20 bones per 21-point hand


# ---------------------------------------------------------------- other sets


def test_mpii() -> None:
    assert MPII.keypoint_names == (
        "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
        "pelvis", "thorax", "upper_neck", "head_top",
        "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist",
    )  # fmt: skip
    assert MPII.sigmas == (
        0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026,
        0.026, 0.026, 0.062, 0.072, 0.179, 0.179, 0.072, 0.062,
    )  # fmt: skip


def test_aic() -> None:
    assert AIC.keypoint_names == (
        "right_shoulder", "right_elbow", "right_wrist",
        "left_shoulder", "left_elbow", "left_wrist",
        "right_hip", "right_knee", "right_ankle",
        "left_hip", "left_knee", "left_ankle", "head_top", "neck",
    )  # fmt: skip
    np.testing.assert_allclose(
        AIC.sigmas,
        [0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144,
         0.03909642, 0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081,
         0.01291456, 0.01236173],
        rtol=0, atol=1e-12,
    )  # fmt: skip


def test_ap10k_and_apt36k() -> None:
    assert AP10K.keypoint_names == (
        "left_eye", "right_eye", "nose", "neck", "root_of_tail",
        "left_shoulder", "left_elbow", "left_front_paw",
        "right_shoulder", "right_elbow", "right_front_paw",
        "left_hip", "left_knee", "left_back_paw",
        "right_hip", "right_knee", "right_back_paw",
    )  # fmt: skip
    assert AP10K.sigmas == (  # ViTPose's ap10k_info.py (mmpose's table since its Dec 2021 "update sigmas")
        0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072,
        0.062, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089,
    )  # fmt: skip
    assert APT36K.name == "apt36k" and AP10K.name == "ap10k"
    assert APT36K.keypoint_names == AP10K.keypoint_names
    assert APT36K.sigmas == AP10K.sigmas
    assert APT36K.skeleton == AP10K.skeleton
    assert APT36K.flip_pairs == AP10K.flip_pairs


@pytest.mark.parametrize(
    "ks", [COCO, MPII], ids=["coco", "mpii"]
)
def test_symmetric_sigmas_where_defined_symmetric(ks: KeypointSet) -> None:
    # COCO's and mmpose's MPII tables are per joint type, so mirrored joints
    # share a sigma; a mismatch means the table is misaligned with the names.
    for a, b in ks.flip_pairs:
        assert ks.sigmas[a] == ks.sigmas[b], (ks.keypoint_names[a], ks.keypoint_names[b])


# ---------------------------------------------------------------- registries


def test_vitpose_plus_order() -> None:
    assert [ks.name for ks in VITPOSE_PLUS_DATASETS] == ["coco", "aic", "mpii", "ap10k", "apt36k", "coco_wholebody"]
    assert [ks.num_keypoints for ks in VITPOSE_PLUS_DATASETS] == [17, 14, 16, 17, 17, 133]
    assert VITPOSE_PLUS_DATASETS[0] is COCO and VITPOSE_PLUS_DATASETS[5] is COCO_WHOLEBODY


def test_keypoint_sets_registry() -> None:
    assert set(KEYPOINT_SETS) == {"coco", "coco_wholebody", "mpii", "aic", "ap10k", "apt36k"}
    for key, ks in KEYPOINT_SETS.items():
        assert ks.name == key


# ---------------------------------------------------------------- lookup


def test_get_by_name_index_none() -> None:
    assert get_keypoint_set() is COCO
    assert get_keypoint_set(None) is COCO
    assert get_keypoint_set("coco_wholebody") is COCO_WHOLEBODY
    assert get_keypoint_set("MPII") is MPII
    for i, ks in enumerate(VITPOSE_PLUS_DATASETS):
        assert get_keypoint_set(i) is ks
    assert get_keypoint_set(1) is AIC
    assert get_keypoint_set("aic", num_keypoints=14) is AIC
    assert get_keypoint_set(5, num_keypoints=133) is COCO_WHOLEBODY


def test_get_bad_name() -> None:
    with pytest.raises(ValueError) as exc:
        get_keypoint_set("halpe")
    msg = str(exc.value)
    assert "halpe" in msg and "\n" not in msg
    for name in KEYPOINT_SETS:
        assert name in msg


@pytest.mark.parametrize("bad", [6, -1, 100])
def test_get_bad_index(bad: int) -> None:
    with pytest.raises(ValueError) as exc:
        get_keypoint_set(bad)
    msg = str(exc.value)
    assert re.search(rf"(?<!\d){re.escape(str(bad))}(?!\d)", msg)
    assert "coco_wholebody" in msg and "\n" not in msg


def test_get_bad_type() -> None:
    with pytest.raises(ValueError):
        get_keypoint_set(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        get_keypoint_set(1.0)  # type: ignore[arg-type]


def test_get_num_keypoints_mismatch() -> None:
    with pytest.raises(ValueError) as exc:
        get_keypoint_set("coco", num_keypoints=133)
    msg = str(exc.value)
    assert "17" in msg and "133" in msg and "coco" in msg
    with pytest.raises(ValueError):
        get_keypoint_set(2, num_keypoints=17)


def test_module_has_no_heavy_imports() -> None:
    import sys

    import vitpose_core.keypoint_sets as mod

    src = open(mod.__file__, encoding="utf-8").read()
    assert not re.search(r"^\s*(import|from)\s+(torch|ray)\b", src, re.M)
    assert "vitpose_core.keypoint_sets" in sys.modules
