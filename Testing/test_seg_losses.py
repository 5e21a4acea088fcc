"""Fine-tuning losses: L_seg + lambda * L_pta with a learnable epsilon."""

import math

import pytest
import torch
import torch.nn.functional as F

from mosmos.seg_losses import MosmosSegLoss, pta_loss, seg_loss, upsample_maps


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
