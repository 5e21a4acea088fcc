"""MOSMOS-U-Net (CLIP ModifiedResNet encoder): shapes, gradients, stem weights, pre-trained init."""

import pytest
import torch
import torch.nn.functional as F

from mosmos.errors import MosmosError
from mosmos.models.backbones import ImageEncoder, create_clip
from mosmos.models.unet2d import MosmosUNet2D


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = MosmosUNet2D(num_classes=3, backbone="tiny-rn", feature_size=4, decoder_heads=4)
    net.set_tag_embeddings(torch.randn(2, 64))
    return net


def test_forward_shapes(tiny):
    logits, maps = tiny(torch.randn(2, 1, 64, 96))
    assert logits.shape == (2, 3, 64, 96)
    assert maps.shape == (2, 3, 2, 3)


def test_gradient_flows(tiny):
    tiny.zero_grad()
    logits, maps = tiny(torch.randn(2, 1, 64, 64))
    (logits.mean() + maps.mean()).backward()
    assert tiny.tag_decoder.layers[0].cross_attn.q.weight.grad.abs().sum() > 0
    assert tiny.queries.background.grad.abs().sum() > 0
    assert tiny.encoder.conv1.weight.grad.abs().sum() > 0
    assert tiny.v_proj.weight.grad.abs().sum() > 0
    unused = [n for n, p in tiny.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_stem_reads_grey_like_rgb_and_dense_features_match_pretraining():
    torch.manual_seed(0)
    visual = create_clip("tiny-rn").visual.eval()
    net = MosmosUNet2D(num_classes=2, backbone="tiny-rn", feature_size=4, decoder_heads=4, in_channels=2).eval()
    net.load_visual(visual)
    grey = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(F.conv2d(grey.expand(1, 2, -1, -1), net.encoder.conv1.weight, stride=2, padding=1),
                               visual.conv1(grey.expand(1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
    # The tag decoder sees the same dense features as in pre-training (ImageEncoder).
    e = net.encoder
    with torch.no_grad():
        x = e.layer4(e.layer3(e.layer2(e.layer1(e.stem(grey.expand(1, 2, -1, -1))))))
        ours = net.dense_features(x)
        _, theirs, _ = ImageEncoder(visual)(grey.expand(1, 3, -1, -1))
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4)


def test_bad_inputs(tiny):
    with pytest.raises(MosmosError, match="multiple of 32"):
        tiny(torch.zeros(1, 1, 64, 40))
    with pytest.raises(MosmosError, match="ResNet"):
        MosmosUNet2D(num_classes=2, backbone="tiny-vit")


def test_init_from_mosmos_pretrain_state():
    from mosmos.models.pretrain import MosmosPretrainModel
    from mosmos.models.segbase import pretrain_arch_kwargs

    pre = MosmosPretrainModel("tiny-rn", decoder_heads=4)
    tensors, header = pre.to_file_state()
    net = MosmosUNet2D(num_classes=3, feature_size=4, **pretrain_arch_kwargs(header["config"]))
    net.load_pretrain_state(tensors, header)
    visual = pre.image_encoder.visual
    torch.testing.assert_close(net.encoder.layer4[0].conv1.weight, visual.layer4[0].conv1.weight)
    torch.testing.assert_close(net.c_proj.weight, visual.attnpool.c_proj.weight)
    torch.testing.assert_close(net.tag_decoder.norm.weight, pre.tag_decoder.norm.weight)
