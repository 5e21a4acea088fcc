"""ROCO reader: the GitHub layout, the CSV variant, missing and corrupt images, and folder errors."""

import logging
import re

import numpy as np
import pytest
from PIL import Image

from helpers import real_data
from mosmos.data.roco import RocoDataset, scan_roco, summarize_roco
from mosmos.errors import MosmosError

REAL = real_data("roco_captions_ccby")
REAL_SPLIT = REAL / "validation" / "radiology"
N_PER_SPLIT = 6


def _real_lines(name, start, n):
    with open(REAL_SPLIT / name, encoding="utf-8") as f:
        lines = f.readlines()
    return lines[start:start + n]


def _image_name(dlink_line):
    rid, cmd, figure = dlink_line.rstrip("\n").split("\t")
    pmcid = re.search(r"(PMC\d+)\.tar\.gz", cmd).group(1)
    return f"{pmcid}_{figure}"


@pytest.fixture
def roco_tree(tmp_path):
    """<root>/data/{train,validation}/radiology with real captions and generated images;
    in each split one image is missing and one is garbage bytes with a .jpg name."""
    rng = np.random.default_rng(0)
    for k, split in enumerate(("train", "validation")):
        folder = tmp_path / "data" / split / "radiology"
        (folder / "images").mkdir(parents=True)
        captions = _real_lines("captions.txt", k * N_PER_SPLIT, N_PER_SPLIT)
        dlinks = _real_lines("dlinks.txt", k * N_PER_SPLIT, N_PER_SPLIT)
        (folder / "captions.txt").write_text("".join(captions), encoding="utf-8")
        (folder / "dlinks.txt").write_text("".join(dlinks), encoding="utf-8")
        for i, line in enumerate(dlinks):
            path = folder / "images" / _image_name(line)
            if i == 0:
                continue  # missing
            if i == 1:
                path.write_bytes(b"\x13\x37 definitely not a JPEG " * 20)
                continue
            Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(path, quality=90)
    return tmp_path


def _warnings(caplog):
    return [r for r in caplog.records if r.name == "mosmos.data.roco" and r.levelno == logging.WARNING]


def test_github_layout_counts_and_one_warning_per_split(roco_tree, caplog):
    with caplog.at_level(logging.INFO, logger="mosmos.data.roco"):
        splits = scan_roco(roco_tree)
    assert list(splits) == ["train", "validation"]
    for split in splits.values():
        assert (split.captions, split.usable, split.missing, split.unreadable) == (N_PER_SPLIT, 4, 1, 1)
        assert all(r.image_path.is_file() and r.caption and not r.caption.startswith(" ") for r in split.records)
    warnings = _warnings(caplog)
    assert len(warnings) == 2
    assert "ROCO train: 6 captions, 4 usable pairs, 1 images missing, 1 unreadable" in warnings[0].getMessage()
    # The same folder found from the data folder and from one split folder.
    assert list(scan_roco(roco_tree / "data")) == ["train", "validation"]
    assert list(scan_roco(roco_tree / "data" / "validation" / "radiology")) == ["validation"]


def test_dataset_items_and_tags(roco_tree, caplog):
    with caplog.at_level(logging.INFO, logger="mosmos.data.roco"):
        ds = RocoDataset(roco_tree, splits=("validation",), tags_fn=lambda t: np.array([len(t)], np.float32))
    assert [r.getMessage().split(":")[0] for r in _warnings(caplog)] == ["ROCO validation"]
    assert len(ds) == 4
    image, report, tags = ds[0]
    assert image.mode == "RGB" and image.size == (24, 20)
    assert report == _real_lines("captions.txt", N_PER_SPLIT + 2, 1)[0].split("\t", 1)[1].strip()
    assert tags[0] == len(report)
    both = RocoDataset(roco_tree, transform=lambda im: np.asarray(im).shape, tags_fn=lambda t: t)
    assert len(both) == 8 and both[7][0] == (20, 24, 3)
    assert both.counts()["train"]["usable"] == 4


def test_default_tags_use_the_tag_vector(roco_tree):
    from mosmos import tags

    ds = RocoDataset(roco_tree, splits="train")
    _, report, vector = ds[0]
    np.testing.assert_array_equal(vector, tags.tag_vector(report))
    sub = RocoDataset(roco_tree, splits="train", tags=("liver", "spleen"))
    assert sub[0][2].shape == (2,)


def test_undecodable_image_is_skipped_at_load_time(roco_tree, caplog):
    ds = RocoDataset(roco_tree, splits=("train",), tags_fn=lambda t: t)
    truncated = ds.records[1][1].image_path
    truncated.write_bytes(truncated.read_bytes()[:40])  # header intact, pixels gone
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mosmos.data.roco"):
        items = [ds[i] for i in range(len(ds))] + [ds[1]]
    assert items[1][1] == ds.records[2][1].caption  # replaced by the next readable pair
    assert ds.counts()["train"]["unreadable"] == 2
    assert len(_warnings(caplog)) == 1


def test_csv_variant(tmp_path, caplog):
    folder = tmp_path / "all_data" / "train" / "radiology"
    (folder / "images").mkdir(parents=True)
    rows = ["id,name,caption"]
    for i in range(3):
        name = f"PMC{100 + i}_fig{i}.jpg"
        if i < 2:
            Image.new("L", (8, 8), 40 * i).save(folder / "images" / name)
        rows.append(f'ROCO_{i:05d},{name},"CT of the liver, case {i}"')
    (folder / "traindata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="mosmos.data.roco"):
        summary = summarize_roco(tmp_path)
    assert summary["train"]["usable"] == 2 and summary["train"]["missing"] == 1
    assert not _warnings(caplog)  # the folder check is quiet
    ds = RocoDataset(tmp_path, tags_fn=lambda t: t)
    assert ds[1][1] == "CT of the liver, case 1"


def test_missing_captions_and_empty_folders(tmp_path):
    with pytest.raises(MosmosError, match="not found"):
        scan_roco(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MosmosError, match="empty"):
        scan_roco(empty)
    folder = tmp_path / "roco" / "data" / "train" / "radiology"
    (folder / "images").mkdir(parents=True)
    (folder / "dlinks.txt").write_text("", encoding="utf-8")
    with pytest.raises(MosmosError, match=str(folder).replace("\\", "\\\\") + ".*captions.txt"):
        scan_roco(tmp_path / "roco")
    (folder / "captions.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(MosmosError, match="no captions"):
        scan_roco(tmp_path / "roco")


def test_real_captions_without_images(caplog):
    with caplog.at_level(logging.WARNING, logger="mosmos.data.roco"):
        splits = scan_roco(REAL)
    val = splits["validation"]
    assert (val.captions, val.usable, val.missing, val.unreadable) == (3393, 0, 3393, 0)
    assert len(_warnings(caplog)) == 1
    with pytest.raises(MosmosError, match="no usable image-report pairs"):
        RocoDataset(REAL)
