"""Keypoint metadata for every dataset a ViTPose / ViTPose++ head can predict.

This module is the single source of truth for keypoint names and order, the
left/right flip pairs used for flip-test augmentation, the drawing skeleton,
the OKS sigmas used for evaluation and per-keypoint / per-edge colours.

Keypoint orders follow the original datasets (and mmpose, which ViTPose was
trained with), so index ``i`` of a model's heatmap output means
``keypoint_names[i]`` of the matching set.

Sigma sources (facts only; values re-typed here):

* COCO: pycocotools ``COCOeval`` keypoint defaults (``Params.kpt_oks_sigmas``).
* COCO-WholeBody: the official evaluation code,
  jin-s13/COCO-WholeBody ``evaluation/myeval_wholebody.py`` (identical to
  open-mmlab/mmpose ``configs/_base_/datasets/coco_wholebody.py``).
* MPII, AIC, AP-10K: open-mmlab/mmpose ``configs/_base_/datasets/{mpii,aic,ap10k}.py``.
* APT-36K: ViTPose++ reuses the AP-10K keypoint definition, so it shares
  AP-10K's names, skeleton and sigmas.

Plain Python only: no torch / Ray, so it is cheap to import anywhere
(drivers, workers, schema tooling).
"""

from __future__ import annotations

__all__ = [
    "KeypointSet",
    "COCO",
    "COCO_WHOLEBODY",
    "MPII",
    "AIC",
    "AP10K",
    "APT36K",
    "VITPOSE_PLUS_DATASETS",
    "KEYPOINT_SETS",
    "LEFT_COLOR",
    "RIGHT_COLOR",
    "CENTER_COLOR",
    "get_keypoint_set",
]

from .keypoint_set import CENTER_COLOR, LEFT_COLOR, RIGHT_COLOR, KeypointSet, make_keypoint_set

# --------------------------------------------------------------------------
# COCO (17)
# --------------------------------------------------------------------------

_COCO_NAMES = (
    "nose",
    "left_eye", "right_eye",
    "left_ear", "right_ear",
    "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
    "left_hip", "right_hip",
    "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)  # fmt: skip

_COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))

# The standard COCO person skeleton (the 1-based list in the annotation
# files' "categories" entry), written out by name.
_COCO_EDGES = (
    ("left_ankle", "left_knee"),
    ("left_knee", "left_hip"),
    ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"),
    ("left_hip", "right_hip"),
    ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "right_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("right_shoulder", "right_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_elbow", "right_wrist"),
    ("left_eye", "right_eye"),
    ("nose", "left_eye"),
    ("nose", "right_eye"),
    ("left_eye", "left_ear"),
    ("right_eye", "right_ear"),
    ("left_ear", "left_shoulder"),
    ("right_ear", "right_shoulder"),
)

# pycocotools COCOeval keypoint defaults (its array is written as x/10).
_COCO_SIGMAS = tuple(
    s / 10.0
    for s in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
              1.07, 1.07, .87, .87, .89, .89)
)  # fmt: skip

COCO = make_keypoint_set("coco", _COCO_NAMES, _COCO_FLIP_PAIRS, _COCO_EDGES, _COCO_SIGMAS)


# --------------------------------------------------------------------------
# COCO-WholeBody (133 = 17 body + 6 foot + 68 face + 21 + 21 hands)
# --------------------------------------------------------------------------

_WB_FOOT_NAMES = (
    "left_big_toe", "left_small_toe", "left_heel",
    "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip
_WB_FACE_NAMES = tuple(f"face-{i}" for i in range(68))


def _hand_names(side: str) -> tuple[str, ...]:
    names = [f"{side}_hand_root"]
    for finger in ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger"):
        names.extend(f"{side}_{finger}{j}" for j in range(1, 5))
    return tuple(names)


_WB_LHAND_NAMES = _hand_names("left")
_WB_RHAND_NAMES = _hand_names("right")

_WB_FOOT_START = 17
_WB_FACE_START = _WB_FOOT_START + len(_WB_FOOT_NAMES)  # 23
_WB_LHAND_START = _WB_FACE_START + len(_WB_FACE_NAMES)  # 91
_WB_RHAND_START = _WB_LHAND_START + len(_WB_LHAND_NAMES)  # 112

_WB_NAMES = _COCO_NAMES + _WB_FOOT_NAMES + _WB_FACE_NAMES + _WB_LHAND_NAMES + _WB_RHAND_NAMES

# Mirror pairs of the 68-point (iBUG/300-W) face layout, in face-local
# indices. Unpaired points lie on the facial midline: chin 8, nose bridge
# 27-30, nose tip 33, and the lip centres 51, 57, 62, 66.
_FACE68_FLIP_PAIRS = (
    # jaw line
    (0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9),
    # eyebrows
    (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),
    # nostrils
    (31, 35), (32, 34),
    # eyes; the lower lids are numbered in the opposite direction
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
    # outer lip
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),
    # inner lip
    (60, 64), (61, 63), (65, 67),
)  # fmt: skip

_WB_FLIP_PAIRS = (
    _COCO_FLIP_PAIRS
    + tuple((_WB_FOOT_START + i, _WB_FOOT_START + 3 + i) for i in range(3))
    + tuple((_WB_FACE_START + a, _WB_FACE_START + b) for a, b in _FACE68_FLIP_PAIRS)
    + tuple((_WB_LHAND_START + i, _WB_RHAND_START + i) for i in range(21))
)


def _hand_edges(side: str) -> tuple[tuple[str, str], ...]:
    # Each finger is a chain root -> 1 -> 2 -> 3 -> 4; the extra
    # wrist -> hand_root edge ties the hand to the body when drawn.
    edges = [(f"{side}_wrist", f"{side}_hand_root")]
    for finger in ("thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger"):
        chain = [f"{side}_hand_root"] + [f"{side}_{finger}{j}" for j in range(1, 5)]
        edges.extend(zip(chain[:-1], chain[1:]))
    return tuple(edges)


_WB_EDGES = (
    _COCO_EDGES
    + (
        ("left_ankle", "left_big_toe"),
        ("left_ankle", "left_small_toe"),
        ("left_ankle", "left_heel"),
        ("right_ankle", "right_big_toe"),
        ("right_ankle", "right_small_toe"),
        ("right_ankle", "right_heel"),
    )
    + _hand_edges("left")
    + _hand_edges("right")
)

# Official COCO-WholeBody evaluation sigmas, per part. The body part equals
# COCO's; note the foot and face parts are *not* left/right symmetric.
_WB_FOOT_SIGMAS = (0.068, 0.066, 0.066, 0.092, 0.094, 0.094)
_WB_FACE_SIGMAS = (
    0.042, 0.043, 0.044, 0.043, 0.040, 0.035, 0.031, 0.025, 0.020, 0.023,
    0.029, 0.032, 0.037, 0.038, 0.043, 0.041, 0.045, 0.013, 0.012, 0.011,
    0.011, 0.012, 0.012, 0.011, 0.011, 0.013, 0.015, 0.009, 0.007, 0.007,
    0.007, 0.012, 0.009, 0.008, 0.016, 0.010, 0.017, 0.011, 0.009, 0.011,
    0.009, 0.007, 0.013, 0.008, 0.011, 0.012, 0.010, 0.034, 0.008, 0.008,
    0.009, 0.008, 0.008, 0.007, 0.010, 0.008, 0.009, 0.009, 0.009, 0.007,
    0.007, 0.008, 0.011, 0.008, 0.008, 0.008, 0.010, 0.008,
)  # fmt: skip
# Both hands use the same table.
_WB_HAND_SIGMAS = (
    0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018,
    0.024, 0.022, 0.026, 0.017, 0.021, 0.021, 0.032, 0.020, 0.019, 0.022,
    0.031,
)  # fmt: skip

_WB_SIGMAS = _COCO_SIGMAS + _WB_FOOT_SIGMAS + _WB_FACE_SIGMAS + _WB_HAND_SIGMAS + _WB_HAND_SIGMAS

COCO_WHOLEBODY = make_keypoint_set("coco_wholebody", _WB_NAMES, _WB_FLIP_PAIRS, _WB_EDGES, _WB_SIGMAS)


# --------------------------------------------------------------------------
# MPII (16)
# --------------------------------------------------------------------------

_MPII_NAMES = (
    "r_ankle", "r_knee", "r_hip",
    "l_hip", "l_knee", "l_ankle",
    "pelvis", "thorax", "upper_neck", "head_top",
    "r_wrist", "r_elbow", "r_shoulder",
    "l_shoulder", "l_elbow", "l_wrist",
)  # fmt: skip

_MPII_FLIP_PAIRS = ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))

_MPII_EDGES = (
    ("r_ankle", "r_knee"),
    ("r_knee", "r_hip"),
    ("r_hip", "pelvis"),
    ("pelvis", "l_hip"),
    ("l_hip", "l_knee"),
    ("l_knee", "l_ankle"),
    ("pelvis", "thorax"),
    ("thorax", "upper_neck"),
    ("upper_neck", "head_top"),
    ("upper_neck", "r_shoulder"),
    ("r_shoulder", "r_elbow"),
    ("r_elbow", "r_wrist"),
    ("upper_neck", "l_shoulder"),
    ("l_shoulder", "l_elbow"),
    ("l_elbow", "l_wrist"),
)

# MPII has no official OKS sigmas; mmpose adapts COCO's per joint type
# (the head/neck joints get a tight 0.026).
_MPII_SIGMAS = (
    0.089, 0.083, 0.107, 0.107, 0.083, 0.089,
    0.026, 0.026, 0.026, 0.026,
    0.062, 0.072, 0.179, 0.179, 0.072, 0.062,
)  # fmt: skip

MPII = make_keypoint_set("mpii", _MPII_NAMES, _MPII_FLIP_PAIRS, _MPII_EDGES, _MPII_SIGMAS)


# --------------------------------------------------------------------------
# AI Challenger (14)
# --------------------------------------------------------------------------

_AIC_NAMES = (
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "head_top", "neck",
)  # fmt: skip

_AIC_FLIP_PAIRS = ((0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11))

_AIC_EDGES = (
    ("right_wrist", "right_elbow"),
    ("right_elbow", "right_shoulder"),
    ("right_shoulder", "neck"),
    ("neck", "left_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_wrist"),
    ("right_ankle", "right_knee"),
    ("right_knee", "right_hip"),
    ("right_hip", "left_hip"),
    ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"),
    ("head_top", "neck"),
    ("right_shoulder", "right_hip"),
    ("left_shoulder", "left_hip"),
)

# From the AI Challenger keypoint evaluation script (which states delta =
# 2 * sigma); measured per keypoint, hence not left/right symmetric.
_AIC_SIGMAS = (
    0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144,
    0.03909642, 0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081,
    0.01291456, 0.01236173,
)  # fmt: skip

AIC = make_keypoint_set("aic", _AIC_NAMES, _AIC_FLIP_PAIRS, _AIC_EDGES, _AIC_SIGMAS)


# --------------------------------------------------------------------------
# AP-10K / APT-36K animals (17)
# --------------------------------------------------------------------------

_ANIMAL_NAMES = (
    "left_eye", "right_eye", "nose", "neck", "root_of_tail",
    "left_shoulder", "left_elbow", "left_front_paw",
    "right_shoulder", "right_elbow", "right_front_paw",
    "left_hip", "left_knee", "left_back_paw",
    "right_hip", "right_knee", "right_back_paw",
)  # fmt: skip

_ANIMAL_FLIP_PAIRS = ((0, 1), (5, 8), (6, 9), (7, 10), (11, 14), (12, 15), (13, 16))

_ANIMAL_EDGES = (
    ("left_eye", "right_eye"),
    ("left_eye", "nose"),
    ("right_eye", "nose"),
    ("nose", "neck"),
    ("neck", "root_of_tail"),
    ("neck", "left_shoulder"),
    ("left_shoulder", "left_elbow"),
    ("left_elbow", "left_front_paw"),
    ("neck", "right_shoulder"),
    ("right_shoulder", "right_elbow"),
    ("right_elbow", "right_front_paw"),
    ("root_of_tail", "left_hip"),
    ("left_hip", "left_knee"),
    ("left_knee", "left_back_paw"),
    ("root_of_tail", "right_hip"),
    ("right_hip", "right_knee"),
    ("right_knee", "right_back_paw"),
)

# AP-10K publishes no sigmas; mmpose adapts COCO's per joint type (eyes,
# nose, neck/tail, shoulder-elbow-paw, hip-knee-paw), so mirrored joints share
# a sigma. This is the table of mmpose since "update sigmas" (#1040, Dec 2021;
# its first AP-10K table was COCO's sequence laid over the animal order) and of
# ViTPose's own configs/_base_/datasets/ap10k_info.py.
_ANIMAL_SIGMAS = (
    0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072,
    0.062, 0.107, 0.087, 0.089, 0.107, 0.087, 0.089,
)  # fmt: skip

AP10K = make_keypoint_set("ap10k", _ANIMAL_NAMES, _ANIMAL_FLIP_PAIRS, _ANIMAL_EDGES, _ANIMAL_SIGMAS)
APT36K = make_keypoint_set("apt36k", _ANIMAL_NAMES, _ANIMAL_FLIP_PAIRS, _ANIMAL_EDGES, _ANIMAL_SIGMAS)


# --------------------------------------------------------------------------
# Registries and lookup
# --------------------------------------------------------------------------

# Position == ViTPose++ multi-head dataset index (the `dataset_index` that
# selects the expert head), so this order must not change.
VITPOSE_PLUS_DATASETS: tuple[KeypointSet, ...] = (COCO, AIC, MPII, AP10K, APT36K, COCO_WHOLEBODY)

KEYPOINT_SETS: dict[str, KeypointSet] = {
    ks.name: ks for ks in (COCO, COCO_WHOLEBODY, MPII, AIC, AP10K, APT36K)
}


# What a bare keypoint count stands for, wherever only the count is known (a model's head, a row, a results file):
# 17 reads as COCO, so an AP-10K or APT-36K set (17 too) must be named, never inferred.
SETS_BY_COUNT: dict[int, KeypointSet] = {ks.num_keypoints: ks for ks in (COCO, COCO_WHOLEBODY, MPII, AIC)}


def keypoint_set_for_count(num_keypoints: int) -> KeypointSet:
    """The keypoint set a bare count of K keypoints stands for (SETS_BY_COUNT); ValueError naming the known counts."""
    found = SETS_BY_COUNT.get(int(num_keypoints))
    if found is None:
        known = ", ".join(f"{k} ({ks.name})" for k, ks in sorted(SETS_BY_COUNT.items()))
        raise ValueError(f"no known keypoint set has {num_keypoints} keypoints (known: {known})")
    return found


def get_keypoint_set(key: str | int | None = None, num_keypoints: int | None = None) -> KeypointSet:
    """Look up a keypoint set by name, ViTPose++ dataset index, or None (COCO).

    If ``num_keypoints`` is given it must equal the set's K, which catches a
    checkpoint/dataset mismatch before it produces nonsense labels.
    """
    if key is None:
        kset = COCO
    elif isinstance(key, bool):
        # bool is an int subclass; True silently meaning AIC would be a trap.
        raise ValueError(f"invalid keypoint set key {key!r}; use a name or an int index")
    elif isinstance(key, int):
        if not 0 <= key < len(VITPOSE_PLUS_DATASETS):
            valid = ", ".join(f"{i}={ks.name}" for i, ks in enumerate(VITPOSE_PLUS_DATASETS))
            raise ValueError(f"unknown ViTPose++ dataset index {key}; valid indices: {valid}")
        kset = VITPOSE_PLUS_DATASETS[key]
    elif isinstance(key, str):
        found = KEYPOINT_SETS.get(key.strip().lower())
        if found is None:
            valid = ", ".join(sorted(KEYPOINT_SETS))
            raise ValueError(f"unknown keypoint set {key!r}; valid names: {valid}")
        kset = found
    else:
        raise ValueError(
            f"invalid keypoint set key {key!r} of type {type(key).__name__}; "
            "use a name (str), a ViTPose++ index (int) or None"
        )

    if num_keypoints is not None and num_keypoints != kset.num_keypoints:
        raise ValueError(
            f"keypoint set {kset.name!r} has {kset.num_keypoints} keypoints, "
            f"but num_keypoints={num_keypoints} was requested"
        )
    return kset
