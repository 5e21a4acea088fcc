"""The hand-written numerics pinned to the library they replace: mosmos.inference.sliding's sliding window
against MONAI's sliding_window_inference (same network weights, gaussian blending)."""

from __future__ import annotations

import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference

from mosmos.inference.sliding import gaussian_importance, sliding_window

ROI = (16, 16, 16)


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(1, 3, 3, padding=1).eval()


def test_sliding_window_blends_as_monai_does_with_the_same_weights():
    """Same windows, same gaussian weights -> MONAI's result within float32 rounding (1e-5; measured 4e-7),
    on a volume that needs a flush last window on each axis, and on one smaller than the window (padded)."""
    net, weights = network(), gaussian_importance(ROI, "cpu")
    for shape in ((37, 30, 21), (10, 12, 9)):
        image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours, maps = sliding_window(image[0], ROI, lambda w: (net(w), None), 3, 0, overlap=0.5, batch_size=2)
            monai = sliding_window_inference(image, ROI, 2, net, overlap=0.5, mode="gaussian", roi_weight_map=weights,
                                             padding_mode="constant", cval=0.0)
        assert maps is None and ours.shape == monai.shape[1:]
        torch.testing.assert_close(ours, monai[0], rtol=0, atol=1e-5)


def test_the_gaussian_weights_are_monais_up_to_the_centre_of_an_even_window():
    """MONAI's gaussian (sigma = roi / 8) peaks on voxel r // 2 of an even window, ours between the two middle
    voxels (symmetric, so mirrored windows weigh alike): at most 0.1 apart (measured 0.089 for 16 cubed), the
    same floor, and equal on an odd window's centre line."""
    ours = gaussian_importance(ROI, "cpu")
    monai = compute_importance_map(ROI, mode="gaussian", sigma_scale=0.125)
    assert (ours - monai).abs().max() < 0.1
    assert ours.min() == monai.min() == torch.tensor(1e-3)
    odd = (15, 15, 15)
    torch.testing.assert_close(gaussian_importance(odd, "cpu"),
                               compute_importance_map(odd, mode="gaussian", sigma_scale=0.125), rtol=0, atol=1e-2)
