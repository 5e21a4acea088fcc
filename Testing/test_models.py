import json
import math

import pytest
import torch
from safetensors.torch import save_file

from mosmos.errors import MosmosError
from mosmos.models.backbones import (BACKBONES, ImageEncoder, canonical_backbone, create_clip,
                                     is_torchscript_file, uses_quick_gelu)
from mosmos.models.pretrain import MosmosPretrainModel
from mosmos.models.tag_decoder import MultiLabelHead, TagDecoder
from mosmos.models.text import TagPromptLearner, TextEncoder, get_tokenizer
from mosmos.tags import PRETRAIN_TAGS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name, grid", [("tiny-vit", (4, 4)), ("tiny-rn", (2, 2))])
def test_image_encoder_shapes_and_global_matches_clip(name, grid):
    clip = create_clip(name).eval()
    enc = ImageEncoder(clip.visual)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        g, s, hw = enc(x)
        assert g.shape == (2, 64) and s.shape == (2, grid[0] * grid[1], 64) and hw == grid
        torch.testing.assert_close(g, clip.visual(x), rtol=1e-5, atol=1e-5)
        # Another input size: positional embeddings are interpolated to the new grid.
        g2, s2, hw2 = enc(torch.randn(1, 3, 96, 128))
    assert hw2 == ((6, 8) if name == "tiny-vit" else (3, 4))
    assert g2.shape == (1, 64) and s2.shape == (1, hw2[0] * hw2[1], 64)


def test_vit_spatial_features_are_projected_patch_tokens():
    clip = create_clip("tiny-vit").eval()
    v = clip.visual
    v.output_tokens = True
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, tokens = v(x)  # open_clip's own patch tokens after ln_post
        _, s, _ = ImageEncoder(v)(x)
    torch.testing.assert_close(s, tokens @ v.proj, rtol=1e-5, atol=1e-5)


def test_report_encoding_matches_clip_and_tokens_are_77():
    clip = create_clip("tiny-vit").eval()
    tokens = get_tokenizer("tiny-vit")(["CT of the abdomen shows a normal liver.", "spleen"])
    assert tokens.shape == (2, 77)
    with torch.no_grad():
        torch.testing.assert_close(TextEncoder(clip).encode_reports(tokens), clip.encode_text(tokens))


def _prompt(name="tiny-vit"):
    clip = create_clip(name).eval()
    text = TextEncoder(clip)
    return text, TagPromptLearner(text, get_tokenizer(name))


def test_tag_embeddings_shape_distinct_and_open_set():
    text, prompt = _prompt()
    tags = list(PRETRAIN_TAGS) + ["duodenum", "urinary bladder", "a very long made up organ name " * 5]
    with torch.no_grad():
        f = prompt(tags)
        alone = prompt(["duodenum"])
    assert f.shape == (len(tags), text.output_dim) and torch.isfinite(f).all()
    assert torch.cdist(f, f)[~torch.eye(len(tags), dtype=torch.bool)].min() > 1e-4
    torch.testing.assert_close(alone[0], f[len(PRETRAIN_TAGS)], rtol=1e-5, atol=1e-5)
    with pytest.raises(MosmosError):
        prompt([""])


def test_tag_prompt_layout_and_short_sequence_equals_full_context():
    text, prompt = _prompt()
    ids, eos = prompt.token_ids(["liver"])
    tok = get_tokenizer("tiny-vit")
    n_tag = len(tok.encode("liver"))
    assert ids[0, 0] == tok.sot_token_id and eos[0] == 1 + 16 + n_tag and ids[0, eos[0]] == tok.eot_token_id
    with torch.no_grad():
        emb = text.token_embedding(ids)
        emb[:, 1:17] = prompt.ctx
        short = text.encode_embeddings(emb, eos)
        pad = text.token_embedding(torch.zeros(1, 77 - ids.shape[1], dtype=torch.long))
        full = text.encode_embeddings(torch.cat([emb, pad], dim=1), eos)
        torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prompt(["liver"]), short)


def test_tag_decoder_shapes_shared_queries_and_scores():
    dec = TagDecoder(32, depth=2, heads=4).eval()
    q, mem = torch.randn(5, 32), torch.randn(3, 7, 32)
    with torch.no_grad():
        f, maps = dec(q, mem)
        f_b, maps_b = dec(q.expand(3, -1, -1), mem)
        assert f.shape == (3, 5, 32) and maps.shape == (3, 5, 7)
        torch.testing.assert_close(f, f_b)
        torch.testing.assert_close(maps, maps_b)
        # Maps respond to the memory, per batch item.
        mem2 = mem.clone()
        mem2[1] = torch.randn(7, 32)
        _, maps2 = dec(q, mem2)
        assert torch.allclose(maps2[0], maps[0]) and not torch.allclose(maps2[1], maps[1])


def test_tag_decoder_maps_are_last_layer_prescaled_scores():
    dec = TagDecoder(16, depth=1, heads=2).eval()
    layer = dec.layers[0]
    q, mem = torch.randn(4, 16), torch.randn(2, 9, 16)
    with torch.no_grad():
        _, maps = dec(q, mem)
        qh = layer.cross_attn.q(layer.norm_q(q)).view(4, 2, 8)
        kh = layer.cross_attn.k(layer.norm_kv(mem)).view(2, 9, 2, 8)
        expected = torch.einsum("qhd,bnhd->bqn", qh, kh) / (2 * math.sqrt(8))
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-5)


def test_multilabel_head_any_number_of_tags():
    head = MultiLabelHead(8)
    assert head(torch.randn(2, 3, 8)).shape == (2, 3)
    assert head(torch.randn(2, 25, 8)).shape == (2, 25)


def test_unknown_backbone_lists_choices_and_names_are_case_insensitive():
    with pytest.raises(MosmosError, match=r"unknown backbone 'vit-huge' \(choose from: RN50, ViT-B-16"):
        create_clip("vit-huge")
    assert canonical_backbone("vit-b-16") == "ViT-B-16" and canonical_backbone("TINY-RN") == "tiny-rn"
    assert set(BACKBONES) == {"RN50", "ViT-B-16", "ViT-B-32", "tiny-vit", "tiny-vit-8", "tiny-vit-4", "tiny-rn"}


@pytest.mark.parametrize("backbone, dim, grid", [("RN50", 1024, (7, 7)), ("ViT-B-16", 512, (14, 14))])
def test_full_size_backbone_forward_on_cpu(backbone, dim, grid):
    # Two tags keep the 12-layer text tower's share of the CPU time small.
    model = MosmosPretrainModel(backbone, tags=["liver", "spleen"]).eval()
    assert model.image_size == 224
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224), model.tokenize(["contrast-enhanced CT of the liver"]))
    assert out["image_features"].shape == (1, dim) and out["report_features"].shape == (1, dim)
    assert out["tag_logits"].shape == (1, 2) and out["grid"] == grid
    assert out["pixel_tag_maps"].shape == (1, 2, grid[0] * grid[1])
    assert all(torch.isfinite(out[k]).all() for k in ("image_features", "report_features", "tag_logits"))


def _outputs(clip, x, tokens):
    with torch.no_grad():
        return clip.encode_image(x), clip.encode_text(tokens)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_open_clip_weights_round_trip(tmp_path, suffix):
    src = create_clip("tiny-vit").eval()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    torch.save(state, path) if suffix == ".pt" else save_file(state, str(path))
    loaded = create_clip("TINY-VIT", weights=path).eval()
    x, tokens = torch.randn(2, 3, 64, 64), get_tokenizer("tiny-vit")(["liver", "spleen"])
    for a, b in zip(_outputs(src, x, tokens), _outputs(loaded, x, tokens)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(MosmosError, match="cannot load as tiny-rn CLIP weights"):
        create_clip("tiny-rn", weights=path)


class _Payload:
    """Stands for arbitrary pickled objects, which loading must refuse to construct."""


def test_weights_files_that_need_unpickling_or_are_junk_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": _Payload()}, evil)
    with pytest.raises(MosmosError, match="refusing to unpickle"):
        create_clip("tiny-vit", weights=evil)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not weights")
    with pytest.raises(MosmosError, match="junk.bin"):
        create_clip("tiny-vit", weights=junk)
    with pytest.raises(MosmosError, match="missing.pt: weights file not found"):
        create_clip("tiny-vit", weights=str(tmp_path / "missing.pt"))
    with pytest.raises(MosmosError, match="not a file nor an open_clip pretrained tag for tiny-vit"):
        create_clip("tiny-vit", weights="laion-nonsense")


def test_openai_style_torchscript_weights(tmp_path):
    # OpenAI released traced TorchScript archives of QuickGELU models; a traced tiny CLIP has the
    # same layout (state dict keys of the original CLIP plus non-weight entries).
    src = create_clip("tiny-vit", quick_gelu=True).eval()
    x, tokens = torch.randn(1, 3, 64, 64), get_tokenizer("tiny-vit")(["liver"])
    with torch.no_grad():
        traced = torch.jit.trace(src, (x, tokens), check_trace=False)
    path = tmp_path / "ViT-tiny.pt"
    traced.save(str(path))
    assert is_torchscript_file(path) and not is_torchscript_file(tmp_path / "missing.pt")
    loaded = create_clip("tiny-vit", weights=path).eval()
    assert uses_quick_gelu(loaded) and not uses_quick_gelu(create_clip("tiny-vit"))
    for a, b in zip(_outputs(src, x, tokens), _outputs(loaded, x, tokens)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-rn"])
def test_pretrain_forward_backward_reaches_every_parameter(backbone):
    from mosmos.losses.pretrain import irc_loss, mlr_loss

    model = MosmosPretrainModel(backbone).train()
    images = torch.randn(4, 3, 64, 64)
    tokens = model.tokenize(["liver and spleen", "the left kidney", "aortic arch", "normal heart"])
    out = model(images, tokens)
    assert out["tag_logits"].shape == (4, 20) and out["pixel_tag_maps"].shape[:2] == (4, 20)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    targets = torch.zeros(4, 20)
    targets[0, [0, 5]] = 1
    loss = irc_loss(out["image_features"], out["report_features"], out["logit_scale"]) + \
        mlr_loss(out["tag_logits"], targets)
    loss.backward()
    # DDP needs every trainable parameter to take part in the loss.
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert model.tag_prompt.ctx.grad.abs().sum() > 0


def test_logit_scale_is_clamped_at_100():
    model = MosmosPretrainModel("tiny-vit")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        out = model(torch.randn(2, 3, 64, 64), model.tokenize(["a", "b"]))
    assert out["logit_scale"].item() == pytest.approx(100.0, rel=1e-5)


def test_pretrain_model_file_round_trip(tmp_path):
    tags = ["liver", "duodenum", "left kidney"]
    model = MosmosPretrainModel("tiny-rn", tags=tags, decoder_depth=2, decoder_heads=4).eval()
    json.dumps(model.config)
    path = tmp_path / "pretrained.mosmos"
    model.save(path, provenance={"stage": "test"})
    again = MosmosPretrainModel.from_file(path).eval()
    assert again.config == model.config and again.tags == tags
    # the file stores fp16: what is read back equals the model with its weights rounded to fp16
    model.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                           for k, v in model.state_dict().items()})
    x, tokens = torch.randn(2, 3, 64, 64), model.tokenize(["liver", "kidney"])
    with torch.no_grad():
        a, b = model(x, tokens), again(x, tokens)
    for key in ("image_features", "report_features", "tag_logits", "pixel_tag_maps"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    tensors, header = model.to_file_state()
    with pytest.raises(MosmosError, match="not a MOSMOS pre-training model"):
        MosmosPretrainModel.from_file_state(tensors, {**header, "kind": "segmentation"})
