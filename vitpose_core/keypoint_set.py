"""`KeypointSet`: one dataset's keypoint layout (names, flip pairs, skeleton, OKS sigmas, colours), and how the tables
of `vitpose_core.keypoint_sets` build one. Plain Python: cheap to import anywhere."""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

# mmpose's visualisation convention: one colour family per body side so a
# flipped (mirrored) prediction is obvious at a glance.
LEFT_COLOR: RGB = (0, 255, 0)
RIGHT_COLOR: RGB = (255, 128, 0)
CENTER_COLOR: RGB = (51, 153, 255)


@dataclass(frozen=True)
class KeypointSet:
    """Immutable description of one dataset's keypoint layout."""

    name: str
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    keypoint_colors: tuple[RGB, ...]
    edge_colors: tuple[RGB, ...]

    def __post_init__(self) -> None:
        # Catch table typos at import time rather than as silently wrong
        # flip-test results or OKS scores much later.
        k = len(self.keypoint_names)
        if len(set(self.keypoint_names)) != k:
            raise ValueError(f"{self.name}: keypoint names are not unique")
        if len(self.sigmas) != k or len(self.keypoint_colors) != k:
            raise ValueError(
                f"{self.name}: expected {k} sigmas/colours, got "
                f"{len(self.sigmas)} sigmas and {len(self.keypoint_colors)} colours"
            )
        if len(self.edge_colors) != len(self.skeleton):
            raise ValueError(f"{self.name}: need one edge colour per skeleton edge")
        for a, b in self.skeleton:
            if not (0 <= a < k and 0 <= b < k) or a == b:
                raise ValueError(f"{self.name}: bad skeleton edge ({a}, {b})")
        seen: set[int] = set()
        for a, b in self.flip_pairs:
            if not (0 <= a < k and 0 <= b < k) or a == b or a in seen or b in seen:
                raise ValueError(f"{self.name}: bad or repeated flip pair ({a}, {b})")
            seen.update((a, b))

    @property
    def num_keypoints(self) -> int:
        """Number of keypoints K."""
        return len(self.keypoint_names)

    def flip_permutation(self) -> list[int]:
        """Index map for horizontal flips: ``perm[i]`` is i's mirror (or i)."""
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm


# --------------------------------------------------------------------------
# Construction helpers
# --------------------------------------------------------------------------


def _side(name: str) -> str:
    """'left', 'right' or 'center' judged from a keypoint name's prefix."""
    lowered = name.lower()
    if lowered.startswith(("left_", "l_")):
        return "left"
    if lowered.startswith(("right_", "r_")):
        return "right"
    return "center"


_SIDE_COLOR: dict[str, RGB] = {
    "left": LEFT_COLOR,
    "right": RIGHT_COLOR,
    "center": CENTER_COLOR,
}


def make_keypoint_set(
    name: str,
    keypoint_names: tuple[str, ...],
    flip_pairs: tuple[tuple[int, int], ...],
    edges_by_name: tuple[tuple[str, str], ...],
    sigmas: tuple[float, ...],
) -> KeypointSet:
    """Build a KeypointSet, resolving skeleton names and deriving colours.

    The skeleton is written with names because index-only edge lists are easy
    to get subtly wrong and hard to review.
    """
    index = {n: i for i, n in enumerate(keypoint_names)}
    skeleton = tuple((index[a], index[b]) for a, b in edges_by_name)
    sides = [_side(n) for n in keypoint_names]
    kpt_colors = tuple(_SIDE_COLOR[s] for s in sides)
    # An edge takes its side's colour only when both ends are on that side;
    # edges crossing the midline (torso, face) are drawn in the centre colour.
    edge_colors = tuple(
        _SIDE_COLOR[sides[a]] if sides[a] == sides[b] else CENTER_COLOR
        for a, b in skeleton
    )
    return KeypointSet(
        name=name,
        keypoint_names=keypoint_names,
        flip_pairs=flip_pairs,
        skeleton=skeleton,
        sigmas=tuple(float(s) for s in sigmas),
        keypoint_colors=kpt_colors,
        edge_colors=edge_colors,
    )
