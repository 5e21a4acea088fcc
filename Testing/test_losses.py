import math

import pytest
import torch

from mosmos.losses.pretrain import irc_loss, mlr_loss


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def _expected_irc(image, text, scale):
    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    image, text = [unit(v) for v in image], [unit(v) for v in text]
    n = len(image)
    logits = [[scale * sum(a * b for a, b in zip(image[i], text[j])) for j in range(n)] for i in range(n)]

    def ce_rows(m):
        return sum(math.log(sum(math.exp(x) for x in row)) - row[i] for i, row in enumerate(m)) / n

    transposed = [[logits[j][i] for j in range(n)] for i in range(n)]
    return (ce_rows(logits) + ce_rows(transposed)) / 2


def test_irc_loss_matches_hand_computation():
    image = [[1.0, 0.0, 2.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]]
    text = [[2.0, 0.5, 1.0], [0.0, 1.0, 0.0], [1.0, -1.0, 0.5]]
    for scale in (1.0, 1 / 0.07):
        got = irc_loss(torch.tensor(image), torch.tensor(text), torch.tensor(scale))
        assert got.item() == pytest.approx(_expected_irc(image, text, scale), rel=1e-5)


def test_irc_loss_is_symmetric_and_scale_invariant_in_feature_norm():
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    s = torch.tensor(10.0)
    assert irc_loss(a, b, s).item() == pytest.approx(irc_loss(b, a, s).item(), rel=1e-6)
    assert irc_loss(3 * a, b, s).item() == pytest.approx(irc_loss(a, b, s).item(), rel=1e-5)


def test_mlr_loss_matches_hand_computation_with_default_gamma():
    logits = [[2.0, -1.0, 0.5, 3.0], [-0.5, 0.0, 1.5, -2.0]]
    targets = [[1, 0, 0, 1], [0, 0, 1, 0]]
    gamma = 1 / (4 - 1)
    terms = [-(y * _log_sigmoid(x) + gamma * (1 - y) * _log_sigmoid(-x))
             for row_x, row_y in zip(logits, targets) for x, y in zip(row_x, row_y)]
    got = mlr_loss(torch.tensor(logits), torch.tensor(targets))
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_mlr_loss_explicit_gamma_and_plain_bce_at_gamma_one():
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    targets = torch.tensor([[0.0, 1.0, 0.0]])
    x, y = logits[0].tolist(), targets[0].tolist()
    expected = sum(-(yi * _log_sigmoid(xi) + 0.25 * (1 - yi) * _log_sigmoid(-xi)) for xi, yi in zip(x, y)) / 3
    assert mlr_loss(logits, targets, gamma=0.25).item() == pytest.approx(expected, rel=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert mlr_loss(logits, targets, gamma=1.0).item() == pytest.approx(bce.item(), rel=1e-6)


def test_mlr_loss_is_stable_for_extreme_logits():
    logits = torch.tensor([[200.0, -200.0], [-200.0, 200.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = mlr_loss(logits, targets)
    loss.backward()
    # Two confident mistakes (-200 for a positive costs 200, +200 for a negative costs gamma*200).
    assert loss.item() == pytest.approx((200 + 200) / 4, rel=1e-6)
    assert torch.isfinite(logits.grad).all()
