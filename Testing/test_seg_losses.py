"""Fine-tuning losses: L_seg + lambda * L_pta with a learnable epsilon."""

import math

import pytest
import torch
import torch.nn.functional as F

from mosmos.losses.finetune import MosmosSegLoss, pta_loss, seg_loss, upsample_maps


def _labels(shape):
    labels = torch.zeros(shape, dtype=torch.long)
    labels[:, : shape[1] // 2] = 1
    labels[:, :, : shape[2] // 2] = 2
    return labels


def test_seg_loss_low_for_confident_correct_logits():
    labels = _labels((1, 8, 8, 4))
    good = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float() * 20
    bad = -good
    assert seg_loss(good, labels) < 0.01 < seg_loss(bad, labels)
    assert torch.isclose(seg_loss(good, labels), seg_loss(good, labels[:, None]))


@pytest.mark.parametrize("dims", [2, 3])
def test_pta_loss_upsamples_maps_to_label_grid(dims):
    grid = (2,) * dims
    size = (8,) * dims
    labels = torch.zeros((1, *size), dtype=torch.long)
    labels[:, 4:] = 1  # the upper half along the first axis, one coarse cell per half
    maps = torch.zeros(1, 2, *grid)
    maps[:, 1, 1] = 1.0
    maps[:, 0, 0] = 1.0
    assert upsample_maps(maps, size).shape == (1, 2, *size)
    assert pta_loss(maps, labels, 0.07) < pta_loss(maps.flip(1), labels, 0.07)
    assert pta_loss(maps, labels, 0.01) < pta_loss(maps, labels, 1.0)


def test_total_loss_and_learnable_epsilon():
    loss = MosmosSegLoss()
    assert math.isclose(loss.epsilon.item(), 0.07, rel_tol=1e-6) and loss.lambda_pta == 0.8
    labels = _labels((2, 8, 8, 8))
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    maps = torch.randn(2, 3, 2, 2, 2, requires_grad=True)
    total, parts = loss(logits, maps, labels)
    assert torch.isclose(total, parts["seg"] + 0.8 * parts["pta"])
    total.backward()
    assert loss.log_epsilon.grad is not None and maps.grad.abs().sum() > 0
    only_seg, parts = MosmosSegLoss(lambda_pta=0)(logits, maps, labels)
    assert torch.isclose(only_seg, seg_loss(logits, labels)) and parts["pta"] == 0


@pytest.mark.parametrize("shape, size", [((1, 4, 3, 3, 3), (48, 40, 48)), ((2, 3, 3, 4, 5), (7, 50, 33)),
                                         ((1, 2, 9, 8, 7), (4, 8, 20)), ((2, 4, 6, 5), (48, 11))])
def test_upsample_maps_gives_the_values_and_gradients_of_interpolate(shape, size):
    """The per-axis matrix products are F.interpolate's linear interpolation (align_corners=False), up and
    down, 2D and 3D; a bf16 input (and autocast) is computed in fp32 and rounded once, as closely as
    F.interpolate's bf16 kernel or closer."""
    mode = "trilinear" if len(shape) == 5 else "bilinear"
    maps = torch.randn(shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = upsample_maps(maps, size)
    ref_maps = maps.detach().clone().requires_grad_()
    ref = F.interpolate(ref_maps, size=size, mode=mode, align_corners=False)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.allclose(maps.grad, ref_maps.grad, rtol=1e-4, atol=1e-4)
    half = maps.detach().bfloat16()
    exact = F.interpolate(half.double(), size=size, mode=mode, align_corners=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = upsample_maps(half, size)
    theirs = F.interpolate(half, size=size, mode=mode, align_corners=False)
    assert ours.dtype == torch.bfloat16
    assert (ours.double() - exact).abs().max() <= (theirs.double() - exact).abs().max()


@pytest.mark.parametrize("shape, size", [((1, 3, 3, 4, 5), (12, 8, 20)), ((2, 4, 6, 5), (48, 11))])
def test_upsample_maps_channels_last_holds_the_same_values(shape, size):
    maps = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    plain, last = upsample_maps(maps, size), upsample_maps(maps, size, channels_last=True)
    layout = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    assert last.is_contiguous(memory_format=layout) and not last.is_contiguous()
    torch.testing.assert_close(last, plain, atol=1e-6, rtol=1e-6)
