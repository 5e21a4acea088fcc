"""Model-header preprocessing: orientation, spacing and intensity, as the training transforms do.

Header form: the flat dict of mosmos.data.transforms.preprocessing_config()::

    {"modality": "CT", "spacing": [1.5, 1.5, 2.0], "a_min": -175, "a_max": 250, "b_min": 0, "b_max": 1,
     "lower_percentile": 0.5, "upper_percentile": 99.5, "roi_size": [96, 96, 96], ...}

CT -> fixed window a_min..a_max -> b_min..b_max, clipped (ScaleIntensityRanged); MR -> per-volume
lower..upper percentiles -> b_min..b_max, clipped (ScaleIntensityRangePercentilesd). A non-positive
spacing keeps the input's (2D models: [s0, s1, -1]). An explicit
``"intensity": {"type": "window" | "percentile" | "none", ...}`` entry overrides the modality rule.
Intensity is applied on the model grid, after resampling, like ScaleIntensityRange(d) after
Spacing(d) in the recipe (docs/method.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import MosmosError


@dataclass(frozen=True)
class Preprocessing:
    spacing: tuple[float, float, float] | None
    intensity: str  # "window" | "percentile" | "none"
    a_min: float = 0.0
    a_max: float = 1.0
    lower: float = 0.0
    upper: float = 100.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True

    @classmethod
    def from_header(cls, header: dict, source: str = "model") -> "Preprocessing":
        pre = header.get("preprocessing") or {}
        try:
            orientation = str(pre.get("orientation", "RAS")).upper()
            if orientation != "RAS":
                raise MosmosError(f"{source}: preprocessing orientation {orientation!r} is not supported (RAS only)")
            spacing = pre.get("spacing")
            spacing = tuple(float(s) for s in spacing) if spacing is not None else None
            if spacing is not None and len(spacing) != 3:
                raise ValueError("spacing needs 3 values")
            if spacing is not None and int(pre.get("spatial_dims", 3)) == 2:
                spacing = (spacing[0], spacing[1], -1.0)  # 2D models: axial slices keep their spacing
            inten = dict(pre.get("intensity") or {})
            modality = str(pre.get("modality") or header.get("modality") or "CT").upper()
            kind = str(inten.get("type", "window" if modality == "CT" else "percentile")).lower()
            inten = {**pre, **inten}
            common = dict(b_min=float(inten.get("b_min", 0.0)), b_max=float(inten.get("b_max", 1.0)),
                          clip=bool(inten.get("clip", True)))
            if kind in ("window", "ct_window", "scale_intensity_range"):
                return cls(spacing, "window", a_min=float(inten["a_min"]), a_max=float(inten["a_max"]), **common)
            if kind in ("percentile", "percentiles", "mr_percentile"):
                return cls(spacing, "percentile", lower=float(inten.get("lower", inten.get("lower_percentile", 0.5))),
                           upper=float(inten.get("upper", inten.get("upper_percentile", 99.5))), **common)
            if kind == "none":
                return cls(spacing, "none")
            raise ValueError(f"unknown intensity type {kind!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise MosmosError(f"{source}: invalid preprocessing in the model header ({e})") from None

    def scale_intensity(self, image: torch.Tensor) -> torch.Tensor:
        """In place where possible; ``image`` is float32 on the model grid."""
        if self.intensity == "none":
            return image
        if self.intensity == "window":
            lo, hi = self.a_min, self.a_max
        else:
            flat = image.reshape(-1)
            lo, hi = (_percentile(flat, q) for q in (self.lower, self.upper))
        if hi - lo <= 0:
            image.fill_(self.b_min)
            return image
        image.sub_(lo).mul_((self.b_max - self.b_min) / (hi - lo)).add_(self.b_min)
        if self.clip:
            image.clamp_(min(self.b_min, self.b_max), max(self.b_min, self.b_max))
        return image

    def body_threshold(self, raw: torch.Tensor) -> float:
        """Intensity above which a voxel of ``raw`` (model grid, before scaling) is body, not the air
        around it: -500 HU for CT windows (air is -1000, fat -100); otherwise 10 % of the way from
        the minimum to the upper percentile (MR background is near the minimum)."""
        if self.intensity == "window":
            return -500.0
        flat = raw.reshape(-1)
        lo = float(flat.min())
        return lo + 0.1 * (_percentile(flat, self.upper if self.intensity == "percentile" else 99.5) - lo)


def _percentile(flat: torch.Tensor, q: float) -> float:
    # kthvalue, because torch.quantile refuses tensors over 16M elements; same "linear" rule as numpy.
    n = flat.numel()
    pos = (n - 1) * q / 100.0
    k = int(pos)
    lo = flat.kthvalue(k + 1).values.item()
    if k + 1 >= n or pos == k:
        return float(lo)
    hi = flat.kthvalue(k + 2).values.item()
    return float(lo + (hi - lo) * (pos - k))
