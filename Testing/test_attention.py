"""Attention overlays read as L_pta trains the pixel–tag maps: epsilon in the model file, P(organ wins) per
labelled organ, P(tag rather than background) for open-set tags, raw scores on request, and the maps' own
Dice in ``mosmos evaluate``.

The exact-formula tests use an untrained tiny MOSMOS-UNETR on a volume that is exactly one window on the
model grid (so the Segmenter's output can be recomputed from one forward pass); the overlay test uses a
model fine-tuned inside the test on phantoms with the config the map test of test_finetune.py uses."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mosmos.cli import main
from mosmos.data.phantoms import make_phantom, phantom_affine, write_decathlon_dataset
from mosmos.data.transforms import preprocessing_config
from mosmos.errors import MosmosError
from mosmos.inference import Segmenter
from mosmos.evaluation.metrics import read_results_csv
from mosmos.files.modelfile import load_model, save_model
from mosmos.models.segmentation import SegmentationModel, TagEmbedder, segmentation_model_from_file_state
from mosmos.models.unetr import MosmosUNETR
from mosmos.losses.finetune import pta_logits, upsample_maps

LABELS = {"0": "background", "1": "spleen", "6": "liver"}
ROI, SPACING = 32, (6.0, 6.0, 6.0)
# The map run of test_finetune.py (tiny-vit-8: 4^3 tokens per 32^3 window, lr 3e-3, 200 steps), on six
# training phantoms so that the maps hold on the two held-out ones (one phantom: liver map Dice 0.74 on it,
# 0.05-0.18 on unseen phantoms; six: 0.61-0.74 unseen, measured).
TRAIN_PHANTOMS, HELD_OUT_PHANTOMS, STEPS = 6, 2, 200
ORGANS = ("liver", "spleen", "right kidney", "left kidney")


def tiny_model_file(path, epsilon: float | None, embedder: bool = False) -> tuple[str, MosmosUNETR]:
    """A random tiny MOSMOS-UNETR segmentation model file (distinct tag embeddings, so the maps differ)."""
    torch.manual_seed(0)
    net = MosmosUNETR(num_classes=len(LABELS), backbone="tiny-vit-8", img_size=ROI, feature_size=4,
                      decoder_heads=4).eval()
    net.set_tag_embeddings(torch.randn(len(LABELS) - 1, net.queries.dim))
    text = TagEmbedder(net.config["backbone"], net.config["quick_gelu"]) if embedder else None
    tensors, header = SegmentationModel(net, text, [ROI] * 3, epsilon=epsilon).to_file_state()
    header.update(labels=LABELS, modality="CT",
                  preprocessing=preprocessing_config(roi_size=[ROI] * 3, spacing=list(SPACING)))
    save_model(path, tensors, header)
    return str(path), net


def one_window_volume() -> tuple[np.ndarray, np.ndarray]:
    """A phantom CT on exactly the model grid (RAS, the model's spacing, one window): no resampling."""
    p = make_phantom(3, shape=(ROI,) * 3, spacing=SPACING, organs=("liver", "spleen"))
    return p.image, phantom_affine((ROI,) * 3, SPACING)


def network_view(seg: Segmenter, image: np.ndarray) -> torch.Tensor:
    """The volume as the network sees it: intensity-scaled, batch and channel axes."""
    return seg.preprocessing.scale_intensity(torch.from_numpy(image.astype(np.float32))[None])[None]


def test_epsilon_round_trips_and_older_files_fall_back_to_its_initial_value(tmp_path):
    path, _ = tiny_model_file(tmp_path / "new.safetensors", epsilon=0.0613)
    assert load_model(path)[1]["pixel_tag_maps"] == {"epsilon": 0.0613}
    seg = Segmenter(path, device="cpu")
    image, affine = one_window_volume()
    assert seg.epsilon == 0.0613 and not seg.model_notices
    assert segmentation_model_from_file_state(*load_model(path)[::-1]).to_file_state()[1]["pixel_tag_maps"] == {
        "epsilon": 0.0613}  # a loaded model keeps it when saved again
    new = seg.segment(image, affine, tags="liver")
    assert not any("epsilon" in n for n in new.notices)

    old, _ = tiny_model_file(tmp_path / "old.safetensors", epsilon=None)  # as written before epsilon was stored
    assert "pixel_tag_maps" not in load_model(old)[1]
    seg_old = Segmenter(old, device="cpu")
    assert seg_old.epsilon == 0.07
    res = seg_old.segment(image, affine, tags="liver")
    assert any("old.safetensors does not store epsilon" in n and "0.07" in n for n in res.notices)
    # the fallback is the initial value itself: same overlay as a file that stores 0.07
    same = Segmenter(tiny_model_file(tmp_path / "007.safetensors", epsilon=0.07)[0], device="cpu")
    np.testing.assert_array_equal(res.attention["liver"], same.segment(image, affine, tags="liver").attention["liver"])

    tensors, header = load_model(path)
    save_model(tmp_path / "control.safetensors", tensors, {**header, "provenance": {"lambda_pta": 0.0}})
    assert any("without L_pta" in n for n in Segmenter(tmp_path / "control.safetensors", device="cpu").model_notices)
    save_model(tmp_path / "bad.safetensors", tensors, {**header, "pixel_tag_maps": {"epsilon": -1}})
    with pytest.raises(MosmosError, match=r"bad.safetensors: invalid pixel_tag_maps.epsilon -1"):
        Segmenter(tmp_path / "bad.safetensors", device="cpu")


def test_overlays_are_the_softmax_l_pta_trains_and_open_set_scores_are_against_background(tmp_path):
    epsilon = 0.05
    path, _ = tiny_model_file(tmp_path / "m.safetensors", epsilon=epsilon, embedder=True)
    seg = Segmenter(path, device="cpu")
    image, affine = one_window_volume()
    # fp32: the reference below runs the network in fp32 (the default may pick bf16 on this CPU)
    res = seg.segment(image, affine, tags=["liver", "spleen", "duodenum"], map_labels=True, precision="fp32")

    with torch.no_grad():
        x = network_view(seg, image)
        _, maps = seg.network(x)  # the weights as read from the file (fp16-stored)
        logits = pta_logits(maps, x.shape[2:], epsilon)  # L_pta's class logits (background = channel 0)
        wins = logits.softmax(1)[0].numpy()
        duodenum = seg.network.open_set_maps(x, ["duodenum"])
        open_set = torch.sigmoid(pta_logits(duodenum, x.shape[2:], epsilon) - logits[:, :1])[0, 0].numpy()
    fp16 = 5e-4  # the overlays are kept in float16 (segmenter.MAP_DTYPE) and rounded so on the input grid: 2 x 2^-12
    np.testing.assert_allclose(res.attention["spleen"], wins[1], atol=fp16)
    np.testing.assert_allclose(res.attention["liver"], wins[2], atol=fp16)
    np.testing.assert_allclose(res.attention["duodenum"], open_set, atol=fp16)
    assert 0.0 <= res.attention["duodenum"].min() and res.attention["duodenum"].max() <= 1.0
    assert res.attention["duodenum"].std() > 0  # a score that varies, not a constant
    # the maps' own label map is their argmax over every labelled class, in label values
    np.testing.assert_array_equal(res.map_labelmap, np.array([0, 1, 6])[wins.argmax(0)])

    raw = seg.segment(image, affine, tags=["liver", "duodenum"], attention_raw=True, precision="fp32")
    with torch.no_grad():
        np.testing.assert_allclose(raw.attention["liver"], upsample_maps(maps, x.shape[2:])[0, 2].numpy(), atol=1e-5)
        np.testing.assert_allclose(raw.attention["duodenum"], upsample_maps(duodenum, x.shape[2:])[0, 0].numpy(),
                                   atol=1e-5)


def test_segment_command_attention_raw_needs_attention_dir(tmp_path, capsys):
    path, _ = tiny_model_file(tmp_path / "m.safetensors", epsilon=0.07)
    assert main(["segment", "ct.nii.gz", "--model", path, "--output", str(tmp_path / "s.nii.gz"),
                 "--attention-raw"]) == 1
    assert "--attention-raw needs --attention DIR" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model file, dataset folder, learnt epsilon): fine-tuned on the training phantoms; the dataset's
    validation phantoms are held out."""
    from mosmos.train.config import FinetuneConfig
    from mosmos.train.finetune import FinetuneRun

    root = tmp_path_factory.mktemp("maps")
    data = root / "data"
    write_decathlon_dataset(data, TRAIN_PHANTOMS, HELD_OUT_PHANTOMS, seed=0, shape=(ROI,) * 3, spacing=SPACING,
                            organs=ORGANS)
    cfg = FinetuneConfig(data=str(data), out=str(root / "out"), arch="unetr", backbone="tiny-vit-8",
                         init="random", roi_size=[ROI] * 3, spacing=list(SPACING), feature_size=8, num_samples=2,
                         lr=3e-3, augment=False, warmup_steps=5, epochs=10**6, max_steps=STEPS, val_every=STEPS,
                         workers=0, log_every=50, seed=0, checkpoint_every=10**6)
    run = FinetuneRun(cfg, progress=False)
    return run.run(), data, run.seg_loss.epsilon.item()


def test_overlay_is_high_inside_its_organ_and_low_elsewhere_on_a_held_out_phantom(trained):
    path, data, epsilon = trained
    assert load_model(path)[1]["pixel_tag_maps"]["epsilon"] == pytest.approx(epsilon) and epsilon != 0.07
    seg = Segmenter(path, device="cpu")
    image, label = (nib.load(data / sub / "phantom_006.nii.gz") for sub in ("imagesTr", "labelsTr"))
    reference = np.asarray(label.dataobj)
    res = seg.segment(np.asarray(image.dataobj), image.affine, tags=["liver", "duodenum"])
    liver = res.attention["liver"]
    inside, outside = liver[reference == 6].mean(), liver[reference != 6].mean()
    print(f"held-out phantom: P(liver wins) mean {inside:.3f} inside the liver, {outside:.3f} outside")
    assert inside >= 0.5 and outside <= 0.1
    duodenum = res.attention["duodenum"]  # open-set: P(duodenum rather than background)
    assert 0.0 <= duodenum.min() and duodenum.max() <= 1.0


def test_evaluate_reports_the_maps_own_dice_beside_the_networks(trained, tmp_path, capsys):
    path, data, _ = trained
    assert main(["evaluate", "--model", str(path), "--data", str(data), "--out", str(tmp_path),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "case,organ,dice,hd95,map_dice"
    results = read_results_csv(tmp_path / "metrics.csv")
    assert list(results) == ["phantom_006", "phantom_007"]
    for case in results.values():
        assert set(case) == set(ORGANS)
        assert all(0.0 <= m["map_dice"] <= 1.0 for m in case.values() if not np.isnan(m["map_dice"]))
    print(printed)
    assert min(case["liver"]["map_dice"] for case in results.values()) > 0.5  # 0.61-0.74 measured
    assert "| organ | Dice (%) | HD95 (mm) | maps' Dice (%) | cases |" in printed
