"""Agreement of a segment with the pixel–tag attention maps, a second view of where the organ is from another
head of the network: the Dice of the segment against the maps' own argmax, and the share of the segment where
the organ's map gives it a probability under one half. The two heads share one encoder and can fail together
(inverted contrast), so this is one signal among several."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Agreement:
    map_dice: float | None     # Dice(segment, maps' argmax == organ)
    unsure_share: float | None  # share of the segment where P(organ) < 0.5


def agreement(segment: np.ndarray, map_segment: np.ndarray | None, probability: np.ndarray | None) -> Agreement:
    """``segment`` and ``map_segment`` boolean masks, ``probability`` the organ's map on the same grid."""
    n = int(np.count_nonzero(segment))
    dice = None
    if map_segment is not None:
        m = int(np.count_nonzero(map_segment))
        dice = 2.0 * int(np.count_nonzero(segment & map_segment)) / (n + m) if n + m else 1.0
    unsure = None
    if probability is not None and n:
        unsure = float(np.count_nonzero(probability[segment] < 0.5)) / n
    return Agreement(dice, unsure)
