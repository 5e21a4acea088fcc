"""MOSMOS-UNETR: 2D->3D inflation, shapes, gradients, pre-trained initialisation."""

import pytest
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from mosmos.errors import MosmosError
from mosmos.models.backbones import create_clip
from mosmos.models.segbase import display_to_ras, inflate_patch_weight, pretrain_arch_kwargs, quarter_layers
from mosmos.models.unetr import MosmosUNETR, interpolate_pos_grid


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = MosmosUNETR(num_classes=4, backbone="tiny-vit", img_size=32, feature_size=8, decoder_heads=4)
    net.set_tag_embeddings(torch.randn(3, 64))
    return net


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.mark.parametrize("in_channels", [1, 2])
def test_inflated_patch_embedding_matches_2d_on_depth_constant_volume(in_channels):
    torch.manual_seed(0)
    conv2d = create_clip("tiny-vit").visual.conv1.double()
    p = conv2d.kernel_size[0]
    weight3d, bias = inflate_patch_weight(conv2d.weight, in_channels, p, MEAN, STD)
    assert weight3d.shape == (conv2d.out_channels, in_channels, p, p, p) and bias.shape == (conv2d.out_channels,)

    picture = torch.rand(1, 1, 2 * p, 3 * p, dtype=torch.float64)  # rows anterior first, columns right to left
    volume = display_to_ras(picture)[..., None].expand(1, in_channels, 3 * p, 2 * p, 2 * p).contiguous()
    response3d = F.conv3d(volume, weight3d, bias, stride=p)
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (MEAN, STD))
    response2d = conv2d((picture.expand(1, 3, -1, -1) - mean) / std)
    assert response3d.shape[-1] == 2
    for k in range(2):
        torch.testing.assert_close(response3d[..., k], display_to_ras(response2d))


def test_display_to_ras_puts_the_patients_right_and_front_where_ras_has_them():
    picture = torch.zeros(3, 4)  # a radiological picture: 3 rows (anterior first), 4 columns (right first)
    picture[0, 0] = 1  # anterior, patient's right
    ras = display_to_ras(picture)
    assert ras.shape == (4, 3) and ras[0, 2] == 1  # x = 0 is the patient's right, the last y is anterior


def test_network_patch_embedding_is_the_inflated_clip_weight(tiny):
    clip_visual = create_clip("tiny-vit").visual
    again = MosmosUNETR(num_classes=2, backbone="tiny-vit", img_size=32, feature_size=8, decoder_heads=4)
    again.load_visual(clip_visual)
    expected, _ = inflate_patch_weight(clip_visual.conv1.weight, 1, 16, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    torch.testing.assert_close(again.patch_embed.weight, expected)
    torch.testing.assert_close(again.blocks[0].attn.in_proj_weight,
                               clip_visual.transformer.resblocks[0].attn.in_proj_weight)


def test_random_init_folds_in_no_picture_normalisation():
    """Random weights saw no pictures: their inflation is the plain one (no offset that would swamp
    the positional embedding)."""
    torch.manual_seed(3)
    visual = create_clip("tiny-vit").visual
    torch.manual_seed(3)
    net = MosmosUNETR(num_classes=2, backbone="tiny-vit", img_size=32, feature_size=4, decoder_heads=4)
    plain, offset = inflate_patch_weight(visual.conv1.weight, 1, 16, (0.0,) * 3, (1.0,) * 3)
    assert offset.abs().max() == 0
    torch.testing.assert_close(net.patch_embed.weight, plain)
    grid = interpolate_pos_grid(visual.positional_embedding, visual.grid_size, (2, 2, 2))
    torch.testing.assert_close(net.pos_embed, grid)


def test_positional_grid_drops_class_token_and_is_constant_along_depth():
    grid = (4, 4)
    pos = torch.randn(1 + 16, 8)
    pos[0] = 1e6  # the class token must not leak into the grid
    out = interpolate_pos_grid(pos, grid, (4, 4, 3))
    assert out.shape == (1, 8, 4, 4, 3)
    assert out.abs().max() < 1e3
    torch.testing.assert_close(out[..., 0], display_to_ras(pos[1:].reshape(4, 4, 8).permute(2, 0, 1))[None])
    torch.testing.assert_close(out[..., 0], out[..., 2])


def test_an_axial_slice_is_embedded_as_pretraining_saw_its_picture():
    """Fine-tuning feeds [0, 1] windowed CT on RAS axes, pre-training normalised radiological pictures:
    with the pre-trained model's own token grid, the 3D tokens of a volume whose axial slices show one
    picture equal the 2D tokens of that picture (normalised as pre-training does), position by position."""
    from mosmos.models.pretrain import MosmosPretrainModel
    from mosmos.train.pretrain import image_transforms

    torch.manual_seed(2)
    pre = MosmosPretrainModel("tiny-vit-4", decoder_heads=4)
    tensors, header = pre.to_file_state()
    config = header["config"]
    size = config["image_size"]
    net = MosmosUNETR(num_classes=2, img_size=(size, size, 8), feature_size=4, **pretrain_arch_kwargs(config))
    net.load_pretrain_state(tensors, header)

    grey = (torch.rand(size, size) * 255).round().to(torch.uint8)
    picture = image_transforms(size, config["mean"], config["std"], train=False)(
        Image.fromarray(grey.numpy()).convert("RGB"))
    visual = pre.image_encoder.visual
    g = visual.grid_size
    with torch.no_grad():
        tokens2d = visual.conv1(picture[None])[0] + visual.positional_embedding[1:].T.reshape(-1, *g)
        volume = display_to_ras(grey.float() / 255)[None, None, ..., None].expand(1, 1, size, size, 8)
        tokens3d = net.patch_embed(volume) + net.pos_embed
    for k in range(2):
        torch.testing.assert_close(tokens3d[0, ..., k], display_to_ras(tokens2d), atol=1e-4, rtol=1e-4)


def test_quarter_layers():
    assert quarter_layers(12) == [2, 5, 8, 11]
    assert quarter_layers(4) == [0, 1, 2, 3]


def test_forward_shapes_and_maps(tiny):
    x = torch.randn(2, 1, 32, 32, 48)
    logits, maps = tiny(x)
    assert logits.shape == (2, 4, 32, 32, 48)
    assert maps.shape == (2, 4, 2, 2, 3)
    assert torch.isfinite(maps).all()


def test_gradient_reaches_tag_decoder_queries_and_encoder(tiny):
    tiny.zero_grad()
    logits, maps = tiny(torch.randn(1, 1, 32, 32, 32))
    (logits.mean() + maps.mean()).backward()
    assert tiny.tag_decoder.layers[0].cross_attn.q.weight.grad.abs().sum() > 0
    assert tiny.queries.background.grad.abs().sum() > 0
    assert tiny.patch_embed.weight.grad.abs().sum() > 0
    assert tiny.blocks[0].attn.in_proj_weight.grad.abs().sum() > 0
    # DDP without find_unused_parameters needs every trainable parameter in the graph.
    assert [n for n, p in tiny.named_parameters() if p.requires_grad and p.grad is None] == []


def test_maps_feed_the_segmentation(tiny):
    """The bottleneck reads the maps: changing the tag embeddings changes the logits."""
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = tiny(x)[0]
        saved = tiny.queries.tag_embeddings.clone()
        tiny.set_tag_embeddings(saved + 1.0)
        after = tiny(x)[0]
        tiny.set_tag_embeddings(saved)
    assert not torch.allclose(before, after)


def test_multichannel_input():
    net = MosmosUNETR(num_classes=3, backbone="tiny-vit", img_size=32, in_channels=2, feature_size=4,
                      decoder_heads=4)
    logits, maps = net(torch.randn(1, 2, 32, 32, 32))
    assert logits.shape == (1, 3, 32, 32, 32) and maps.shape == (1, 3, 2, 2, 2)


def test_vit_b32_has_an_extra_upsampling_level():
    net = MosmosUNETR(num_classes=2, backbone="ViT-B-32", img_size=64, feature_size=2)
    assert len(net.ups) == 5 and len(net.skips) == 3
    with torch.no_grad():
        logits, maps = net(torch.randn(1, 1, 64, 64, 32))
    assert logits.shape == (1, 2, 64, 64, 32) and maps.shape == (1, 2, 2, 2, 1)


def test_patch_8_vit_has_a_finer_token_grid_and_one_level_less():
    net = MosmosUNETR(num_classes=3, backbone="tiny-vit-8", img_size=32, feature_size=4, decoder_heads=4)
    assert len(net.ups) == 3 and len(net.skips) == 2
    with torch.no_grad():
        logits, maps = net(torch.randn(1, 1, 32, 32, 32))
    assert logits.shape == (1, 3, 32, 32, 32) and maps.shape == (1, 3, 4, 4, 4)


def test_bad_inputs():
    with pytest.raises(MosmosError, match="multiple"):
        MosmosUNETR(num_classes=2, backbone="tiny-vit", img_size=40)
    with pytest.raises(MosmosError, match="ViT"):
        MosmosUNETR(num_classes=2, backbone="tiny-rn", img_size=32)
    net = MosmosUNETR(num_classes=3, backbone="tiny-vit", img_size=32, feature_size=4, decoder_heads=4)
    with pytest.raises(MosmosError, match="tag embeddings"):
        net.set_tag_embeddings(torch.zeros(3, 64))
    with pytest.raises(MosmosError, match="multiple of 16"):
        net(torch.zeros(1, 1, 32, 32, 20))


def test_init_from_mosmos_pretrain_state():
    from mosmos.models.pretrain import MosmosPretrainModel

    torch.manual_seed(1)
    pre = MosmosPretrainModel("tiny-vit", decoder_heads=4)
    tensors, header = pre.to_file_state()
    net = MosmosUNETR(num_classes=3, img_size=32, feature_size=4, **pretrain_arch_kwargs(header["config"]))
    net.load_pretrain_state(tensors, header)
    visual = pre.image_encoder.visual
    expected, _ = inflate_patch_weight(visual.conv1.weight, 1, 16, header["config"]["mean"], header["config"]["std"])
    torch.testing.assert_close(net.patch_embed.weight, expected)
    torch.testing.assert_close(net.proj, visual.proj)
    torch.testing.assert_close(net.tag_decoder.layers[0].cross_attn.k.weight,
                               pre.tag_decoder.layers[0].cross_attn.k.weight)
    with pytest.raises(MosmosError, match="not a MOSMOS pre-training model"):
        net.load_pretrain_state(tensors, {"kind": "segmentation"})
    other = MosmosUNETR(num_classes=3, img_size=32, feature_size=4, backbone="tiny-vit", decoder_heads=8)
    with pytest.raises(MosmosError, match="decoder_heads"):
        other.load_pretrain_state(tensors, header)


def test_model_file_round_trip(tiny, tmp_path):
    from mosmos.files.modelfile import load_model, save_model
    from mosmos.models.segmentation import build_network

    save_model(tmp_path / "seg.mosmos", {k: v.detach() for k, v in tiny.state_dict().items()},
               {"kind": "segmentation", "config": tiny.config})
    tensors, header = load_model(tmp_path / "seg.mosmos")
    again = build_network(header["config"])
    again.load_state_dict(tensors, strict=True)
    # the file stores fp16: the network read back is the one with its weights rounded to fp16
    rounded = build_network(header["config"])
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in tiny.state_dict().items()}, strict=True)
    x = torch.randn(1, 1, 32, 32, 32)
    rounded.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], rounded(x)[0])
    with pytest.raises(MosmosError, match="unknown architecture"):
        build_network({"arch": "vnet"})


def test_output_block_reads_the_up_sampled_maps(tiny):
    """maps_at_output: the output block's last inputs are the maps up-sampled as L_pta reads them, with weights that
    start as L_pta's reading (map / epsilon's initial value): without the decoder's features the network's logits are
    exactly L_pta's class logits (the paper's decoder has no such inputs)."""
    from mosmos.models.segbase import EPSILON_INIT
    from mosmos.losses.finetune import pta_logits

    fs = tiny.config["feature_size"]
    conv = tiny.out.conv.conv
    assert tiny.config["maps_at_output"] and conv.in_channels == fs + 4
    saved = {k: v.clone() for k, v in tiny.out.state_dict().items()}
    with torch.no_grad():
        conv.weight[:, :fs] = 0
        conv.bias.zero_()
        x = torch.randn(1, 1, 32, 32, 32)
        logits, maps = tiny(x)
        tiny.out.load_state_dict(saved)
    torch.testing.assert_close(logits, pta_logits(maps, x.shape[2:], EPSILON_INIT))
    paper = MosmosUNETR(num_classes=4, backbone="tiny-vit", img_size=32, feature_size=8, decoder_heads=4,
                        maps_at_output=False)
    assert paper.out.conv.conv.in_channels == fs


def test_model_files_from_before_the_output_maps_load_as_the_papers_decoder(tmp_path):
    """A file whose config has no maps_at_output entry was written by the paper's decoder: it loads unchanged."""
    from mosmos.models.segmentation import build_network

    torch.manual_seed(0)
    old = MosmosUNETR(num_classes=3, backbone="tiny-vit", img_size=32, feature_size=4, decoder_heads=4,
                      maps_at_output=False)
    config = {k: v for k, v in old.config.items() if k != "maps_at_output"}
    again = build_network(config)
    again.load_state_dict(old.state_dict(), strict=True)
    assert again.config["maps_at_output"] is False
    x = torch.randn(1, 1, 32, 32, 32)
    old.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], old(x)[0])
