"""Fine-tuning end to end with tiny configs (MOSMOS-UNETR on tiny-vit, MOSMOS-U-Net on tiny-rn), the
``mosmos evaluate`` command, resume after SIGKILL and bad input through the command line.

Speed: phantoms at 6 mm in a 32^3 grid (the whole body fits one 32^3 crop) with four large organs;
2 crops per step (on the CPU, batch-1 3D convolutions of this size take PyTorch's slow native path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers import events, kill_after_checkpoint, real_data, run_cli, run_torchrun
from mosmos.cli import main
from mosmos.data.phantoms import write_decathlon_dataset
from mosmos.evaluation.metrics import dice_scores, read_results_csv
from mosmos.files.modelcard import file_sha256
from mosmos.files.modelfile import load_model
from mosmos.train.config import FinetuneConfig

ORGANS = ("liver", "spleen", "right kidney", "left kidney")
SHAPE, SPACING = (32, 32, 32), (6.0, 6.0, 6.0)
# tiny-vit: 2^3 tokens per window, too coarse for the maps at the output block: the paper's decoder (README)
UNETR = dict(arch="unetr", backbone="tiny-vit", roi_size=[32, 32, 32], feature_size=8, num_samples=2, lr=1e-2,
             maps_at_output=False)
UNET = dict(arch="unet2d", backbone="tiny-rn", roi_size=[64, 64], feature_size=8, num_samples=8, lr=3e-3)
SHAPE_2D, SPACING_2D = (64, 64, 16), (3.0, 3.0, 6.0)  # the 2D network needs 64 x 64 slices (stride 32)
TOTALSEG = real_data("totalseg_example")


def config(data, out, steps: int, val_every: int, **kw) -> FinetuneConfig:
    base = dict(init="random", spacing=list(SPACING), augment=False, warmup_steps=5, workers=0, log_every=5, seed=0,
                checkpoint_every=10**6)
    return FinetuneConfig(data=str(data), out=str(out), epochs=10**6, max_steps=steps, val_every=val_every,
                          **{**base, **kw})


def phantoms(root: Path, n_train: int, n_val: int, seed: int = 0, arch: str = "unetr") -> Path:
    shape, spacing = (SHAPE, SPACING) if arch == "unetr" else (SHAPE_2D, SPACING_2D)
    write_decathlon_dataset(root, n_train, n_val, seed=seed, shape=shape, spacing=spacing, organs=ORGANS)
    return root


def arch_config(arch: str) -> dict:
    return {**UNETR, "spacing": list(SPACING)} if arch == "unetr" else {**UNET, "spacing": list(SPACING_2D)}


def val_dices(log: Path) -> list[float]:
    return [e["val_dice"] for e in events(log) if e["event"] == "val"]


def training_view(run, item) -> tuple[torch.Tensor, torch.Tensor]:
    """A pre-processed case as the network sees it in training: padded to the window the way the training
    pipeline pads (symmetrically); the 2D network gets the axial slices as a batch."""
    from monai.transforms import SpatialPad

    roi = list(run.prep["roi_size"])
    pad = SpatialPad(roi + [1] if len(roi) == 2 else roi)
    image, label = (torch.as_tensor(pad(torch.as_tensor(item[k])))[None] for k in ("image", "label"))
    if len(roi) == 2:
        image, label = image[0].permute(3, 0, 1, 2), label[0].permute(3, 0, 1, 2)
    return image, label


@torch.no_grad()
def pixel_tag_maps(run, image: torch.Tensor) -> torch.Tensor:
    run.network.eval()
    _, maps = run.network(image.to(run.device))
    run.network.train()
    return maps


def map_dices(run, item) -> np.ndarray:
    """Per-organ Dice of the pixel–tag maps alone: argmax of the maps up-sampled to the label grid."""
    from mosmos.losses.finetune import upsample_maps

    image, label = training_view(run, item)
    pred = upsample_maps(pixel_tag_maps(run, image).float(), label.shape[2:]).argmax(1)
    return dice_scores(pred.cpu().numpy(), label[:, 0].numpy(), run.spec.num_classes)


@pytest.mark.parametrize("arch, steps", [("unetr", 150), ("unet2d", 500)])
def test_overfits_one_phantom(tmp_path, arch, steps):
    """Memorise one case (validation = that case), and the pixel–tag maps: one per class on the token grid.

    The U-Net needs more steps: slice by slice, the small organs on the patient's left (spleen, left
    kidney) are learned last (Dice 0 until about step 200, 0.93 at 275, 0.997 at 500; measured)."""
    from mosmos.train.finetune import FinetuneRun

    data = phantoms(tmp_path / "data", 1, 0, arch=arch)
    log = tmp_path / "events.jsonl"
    run = FinetuneRun(config(data, tmp_path / "out", steps, steps // 5, **arch_config(arch)), events=str(log),
                      progress=False)
    assert run.val_cases == run.train_cases  # a one-case dataset validates on its training case
    path = run.run()
    dices = val_dices(log)
    print(f"{arch}: validation Dice {[round(d, 3) for d in dices]}")
    tensors, header = load_model(path)
    assert max(dices) >= 0.90 and header["provenance"]["val_dice"] == pytest.approx(max(dices), abs=1e-6)
    assert header["labels"] == {"0": "background", "1": "spleen", "2": "right kidney", "3": "left kidney",
                                "6": "liver"}
    done = events(log)[-1]
    assert done["event"] == "done" and done["step"] == steps
    image, _ = training_view(run, run.val_set[0])
    maps = pixel_tag_maps(run, image)
    roi, stride = run.prep["roi_size"], 16 if arch == "unetr" else 32
    assert maps.shape[:2] == (image.shape[0], run.spec.num_classes)  # one map per class, background included
    assert tuple(maps.shape[2:]) == tuple(s // stride for s in roi)  # the token grid


# The U-Net's map run: 4 x 4 tokens on 128 x 128 slices at 1.5 mm, so that organs other than the liver have
# tokens of their own.
MAP_RUN_2D = ((128, 128, 16), (1.5, 1.5, 6.0), dict(UNET, roi_size=[128, 128], num_samples=4))


def test_pta_loss_moves_the_2d_pixel_tag_maps_toward_the_labels(tmp_path):
    """The U-Net's maps alone (argmax of the up-sampled maps) segment more of the case as training goes on."""
    from mosmos.train.finetune import FinetuneRun

    shape, spacing, arch_cfg = MAP_RUN_2D
    data = tmp_path / "data"
    write_decathlon_dataset(data, 1, 0, seed=0, shape=shape, spacing=spacing, organs=ORGANS)
    cfg = config(data, tmp_path / "out", 200, 200, **{**arch_cfg, "spacing": list(spacing)})
    run = FinetuneRun(cfg, progress=False)
    before = map_dices(run, run.val_set[0])
    run.run()
    after = map_dices(run, run.val_set[0])
    print(f"unet2d: pixel-tag map Dice {np.round(before, 2)} -> {np.round(after, 2)} ({', '.join(run.spec.tags)})")
    liver = run.spec.tags.index("liver")
    assert after[liver] > 0.6 > before[liver]
    assert np.nanmean(after) > np.nanmean(before) + 0.1


def trivial_dice(run) -> float:
    """Mean validation Dice of labelling every voxel as the training set's most frequent organ."""
    values = run.spec.label_values
    counts = sum(np.bincount(np.asarray(nib.load(str(case["label"])).dataobj).ravel(), minlength=values[-1] + 1)
                 for case in run.train_cases)
    organ = values.index(max(values[1:], key=lambda v: counts[v]))  # network class of that organ
    scores = [dice_scores(np.full(np.shape(item["label"])[1:], organ), np.asarray(item["label"])[0],
                          run.spec.num_classes) for item in run.val_set]
    return float(np.nanmean(scores))


@pytest.mark.parametrize("arch, steps, val_every", [("unetr", 80, 5), ("unet2d", 200, 25)])
def test_learns_a_small_training_set_beyond_trivial(tmp_path, arch, steps, val_every):
    from mosmos.train.finetune import FinetuneRun

    data = phantoms(tmp_path / "data", 4, 2, arch=arch)
    log = tmp_path / "events.jsonl"
    run = FinetuneRun(config(data, tmp_path / "out", steps, val_every, **arch_config(arch)), events=str(log),
                      progress=False)
    trivial = trivial_dice(run)
    path = run.run()
    dices = val_dices(log)
    print(f"{arch}, 4 training / 2 validation phantoms: validation Dice {[round(d, 3) for d in dices]}; "
          f"trivial {trivial:.3f}")
    assert max(dices) > trivial + 0.15
    assert load_model(path)[1]["config"]["arch"] == arch


def _pretrained_files(tmp_path: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    from mosmos.models.backbones import create_clip
    from mosmos.models.pretrain import MosmosPretrainModel

    torch.manual_seed(1)
    mosmos_file, clip_file = tmp_path / "pretrained.safetensors", tmp_path / "clip.safetensors"
    MosmosPretrainModel("tiny-vit").save(mosmos_file)
    save_file({k: v.contiguous() for k, v in create_clip("tiny-vit").state_dict().items()}, str(clip_file))
    return mosmos_file, clip_file


def test_without_the_pta_loss_the_untrained_maps_stay_out_of_the_output_block(tmp_path):
    """lambda 0: the maps are never trained, so the network is the paper's decoder whatever maps_at_output says
    (read at the output block at 1/epsilon they drowned the decoder: a 800-step lambda-0 run labelled nothing)."""
    from mosmos.data.decathlon import load_decathlon
    from mosmos.train.finetune import build_networks

    data = phantoms(tmp_path / "data", 1, 0)
    spec = load_decathlon(data)
    for lambda_pta, expected in ((0.8, True), (0.0, False)):
        cfg = config(data, tmp_path / "out", 1, 1, **{**UNETR, "maps_at_output": True, "lambda_pta": lambda_pta})
        network, _ = build_networks(cfg, spec, cfg.roi_size)
        assert network.config["maps_at_output"] is expected
        assert network.out.conv.conv.in_channels == cfg.feature_size + (spec.num_classes if expected else 0)


def test_init_from_mosmos_and_clip_files_loads_their_weights(tmp_path):
    from mosmos.data.decathlon import load_decathlon
    from mosmos.train.finetune import build_networks, finetune

    data = phantoms(tmp_path / "data", 1, 0)
    spec = load_decathlon(data)
    mosmos_file, clip_file = _pretrained_files(tmp_path)
    block = "transformer.resblocks.1.attn.in_proj_weight"
    for init, path, key in (("mosmos", mosmos_file, f"image_encoder.visual.{block}"),
                            ("clip", clip_file, f"visual.{block}")):
        cfg = config(data, tmp_path / init, 1, 1, **{**UNETR, "init": init, "pretrained": str(path)})
        network, embedder = build_networks(cfg, spec, cfg.roi_size)
        expected = load_model(path)[0][key] if init == "mosmos" else _safetensors(path)[key]
        assert torch.equal(network.blocks[1].attn.in_proj_weight, expected)
        random_net, _ = build_networks(config(data, tmp_path / "r", 1, 1, **UNETR), spec, cfg.roi_size)
        assert not torch.equal(random_net.blocks[1].attn.in_proj_weight, expected)
        if init == "mosmos":  # the tag decoder and the text side come from the pre-training file too
            tensors = load_model(path)[0]
            assert torch.equal(network.tag_decoder.layers[0].cross_attn.q.weight,
                               tensors["tag_decoder.layers.0.cross_attn.q.weight"])
            assert torch.equal(embedder.tag_prompt.ctx, tensors["tag_prompt.ctx"])
        model = finetune(cfg, progress=False)
        assert load_model(model)[1]["provenance"]["init"] == init
        card = load_model(model)[1]["card"]  # the model card names the pre-trained file by its SHA-256
        assert card["init"] == {"kind": init, "file": path.name, "sha256": file_sha256(path)}
        assert card["data"] == {"folder": "data", "name": spec.name, "cases": 1, "label_ratio": 1.0}
        assert card["training"]["steps"] == 1
        assert set(card["validation"]["dice"]) <= set(spec.tags) and "mean_dice" in card["validation"]


def _safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def totalseg_dataset(root: Path) -> Path:
    """The TotalSegmentator example CT with its 62-class map, keeping only the classes that are MOSMOS
    organ tags (abdominal organs and vessels); every other structure (bones, muscles, bowel, lungs...)
    becomes background. TotalSegmentator's own values and names are kept: the reader maps the names
    to tags, and the gaps in the values are remapped for training."""
    from mosmos.tags import PRETRAIN_TAGS, normalize_tag

    names = json.loads((TOTALSEG / "class_map_subset.json").read_text())["total"]
    seg = nib.load(str(TOTALSEG / "example_seg_fast_force_split.nii.gz"))
    label = np.asarray(seg.dataobj)
    present = set(np.unique(label).tolist())
    keep = {int(v): n for v, n in names.items() if int(v) in present and normalize_tag(n) in PRETRAIN_TAGS}
    label = np.where(np.isin(label, list(keep)), label, 0).astype(np.uint8)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(TOTALSEG / "example_ct.nii.gz", root / "imagesTr" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(label, seg.affine, seg.header), str(root / "labelsTr" / "ct.nii.gz"))
    case = {"image": "imagesTr/ct.nii.gz", "label": "labelsTr/ct.nii.gz"}
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", **{str(v): n for v, n in sorted(keep.items())}},
        "modality": {"0": "CT"}, "training": [case], "validation": [case]}))
    return root


def test_real_ct_fine_tunes_and_evaluates_through_the_cli(tmp_path, capsys):
    data = totalseg_dataset(tmp_path / "ct")
    out = tmp_path / "out"
    code = main(["finetune", "--data", str(data), "--out", str(out), "--arch", "unetr", "--backbone", "tiny-vit",
                 "--init", "random", "--epochs", "30", "--num-samples", "2", "--lr", "1e-2", "--warmup-steps", "5",
                 "--roi-size", "32", "32", "32", "--spacing", "6", "6", "6", "--feature-size", "8",
                 "--val-every", "30", "--workers", "0", "--no-progress", "--device", "cpu", "--paper-decoder"])
    assert code == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out / "model.safetensors"), "--data", str(data),
                 "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    print(printed)
    results = read_results_csv(tmp_path / "eval" / "metrics.csv")
    organs = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "pancreas",
              "right adrenal gland", "left adrenal gland", "aorta", "inferior vena cava",
              "portal vein and splenic vein"]
    assert list(results) == ["ct"] and list(results["ct"]) == organs
    assert all(0 <= m["dice"] <= 1 and m["hd95"] >= 0 for m in results["ct"].values())
    assert results["ct"]["liver"]["dice"] > 0.2  # 0.33 measured after 30 steps at 6 mm
    assert "| liver |" in printed and "**mean**" in printed
    assert (tmp_path / "eval" / "metrics.md").read_text() in printed


def _cli_args(data: Path, out: Path, log: Path, steps: int, *extra: str) -> list[str]:
    return ["finetune", "--data", str(data), "--out", str(out), "--arch", "unetr", "--backbone", "tiny-vit",
            "--init", "random", "--epochs", str(steps), "--num-samples", "2", "--lr", "1e-2", "--warmup-steps", "2",
            "--roi-size", "32", "32", "32", "--spacing", "6", "6", "6", "--feature-size", "8", "--val-every", "4",
            "--workers", "0", "--log-every", "1", "--events", str(log), "--no-progress", *extra]


def test_killed_fine_tune_resumes_to_the_planned_steps(tmp_path):
    from mosmos.inference import Segmenter

    data = phantoms(tmp_path / "data", 1, 0)
    out, log = tmp_path / "out", tmp_path / "events.jsonl"
    killed_at = kill_after_checkpoint(_cli_args(data, out, log, 12), log, before="total_steps")
    assert killed_at < 12
    resumed = run_cli(*_cli_args(data, out, log, 12, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    ev = events(log)
    restart = [e for e in ev if e["event"] == "start"][-1]
    assert 0 < restart["resumed_step"] <= killed_at
    assert ev[-1]["event"] == "done" and ev[-1]["step"] == 12
    steps = [e["step"] for e in ev if e["event"] == "step"]
    assert sorted(set(steps)) == list(range(1, 13))
    Segmenter(out / "model.safetensors", device="cpu")
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


def test_two_process_ddp_fine_tune_ends_identical_with_one_model_file(tmp_path):
    """torchrun with 2 processes: each trains on its own phantom, validation is split over the ranks and
    summed, only rank 0 writes events and files, and the ranks end with identical weights."""
    data = phantoms(tmp_path / "data", 2, 2)
    out, log = tmp_path / "ddp", tmp_path / "ddp.jsonl"
    result = run_torchrun(2, *_cli_args(data, out, log, 4))
    assert result.returncode == 0, result.stderr[-2000:]
    ev = events(log)
    assert [e["event"] for e in ev].count("start") == 1 and ev[0]["world_size"] == 2
    assert ev[0]["steps_per_epoch"] == 1  # two training volumes, one per process
    val = [e for e in ev if e["event"] == "val"]
    assert len(val) == 1 and set(val[0]["dice"]) == set(ORGANS)
    done = ev[-1]
    assert done["event"] == "done" and done["step"] == 4
    assert len(done["rank_digests"]) == 2 and done["rank_digests"][0] == done["rank_digests"][1]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.safetensors"]
    assert load_model(out / "model.safetensors")[1]["provenance"]["val_cases"] == ["phantom_002", "phantom_003"]


def _break(data: Path, how: str) -> str:
    """Damage a one-case phantom dataset; returns what the error line must name."""
    label = data / "labelsTr" / "phantom_000.nii.gz"
    image = data / "imagesTr" / "phantom_000.nii.gz"
    img = nib.load(str(label))
    if how == "missing json":
        (data / "dataset.json").unlink()
        return str(data)
    if how == "malformed json":
        (data / "dataset.json").write_text('{"labels": {"0": "background",')
        return "dataset.json: malformed JSON"
    if how == "shape":
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine), str(label))
    elif how == "affine":
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([2.0, 1, 1, 1])), str(label))
    elif how == "label values":
        values = np.asarray(img.dataobj).copy()
        values[0, 0, 0] = 42
        nib.save(nib.Nifti1Image(values, img.affine), str(label))
    elif how == "2D image":
        flat = nib.load(str(image))
        nib.save(nib.Nifti1Image(np.asarray(flat.dataobj)[:, :, :1], flat.affine), str(image))
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :1], img.affine), str(label))
    return "case phantom_000"


@pytest.mark.parametrize("how", ["missing json", "malformed json", "shape", "affine", "label values", "2D image"])
def test_bad_dataset_is_one_error_line_and_exit_code_1(tmp_path, capsys, how):
    data = phantoms(tmp_path / "data", 1, 0)
    must_name = _break(data, how)
    code = main(["finetune", "--data", str(data), "--out", str(tmp_path / "out"), "--backbone", "tiny-vit",
                 "--init", "random", "--workers", "0", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 1
    assert len(err) == 1 and err[0].startswith("mosmos finetune: error:") and must_name in err[0], err


def test_a_learnt_prompt_trains_the_tag_context_and_the_file_keeps_the_embeddings_of_it(tmp_path):
    """--learn-prompt (the paper updates the CoOp context in fine-tuning too): the context moves, and the network's
    stored tag embeddings are the ones the text side computes from the context the model file saves, so organs
    the network labels and open-set names are embedded by the same prompt."""
    from mosmos.train.finetune import FinetuneRun

    data = phantoms(tmp_path / "data", 1, 0)
    runs = {}
    for learn in (False, True):
        cfg = config(data, tmp_path / str(learn), 3, 10**6, **{**UNETR, "learn_prompt": learn})
        runs[learn] = run = FinetuneRun(cfg)
        start = run.embedder.tag_prompt.ctx.detach().clone()
        saved = load_model(run.run())[0]
        ctx = run.embedder.tag_prompt.ctx
        assert torch.equal(ctx, start) != learn
        torch.testing.assert_close(saved["text.tag_prompt.ctx"], ctx, rtol=1e-3, atol=1e-4)  # stored as fp16
        assert torch.equal(run.network.queries.tag_embeddings, run.embedder(run.spec.tags))
    assert torch.equal(runs[False].embedder.tag_prompt.ctx, start)  # the same seeded start for both
