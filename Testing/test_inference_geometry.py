"""Inference geometry: outputs lie exactly on the input grid (shape, affine, world positions) for any
orientation and array order, and the readers get real NIfTI/NRRD/DICOM geometry right.

The segmentation network here is the deterministic stub of inference_stub.py (a threshold on the
preprocessed intensity), because these tests are about geometry and I/O, not about the model.
"""


import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from inference_stub import write_stub_model
from mosmos.inference import Segmenter
from mosmos.inference.geometry import model_grid
from helpers import real_data
from mosmos.inference.io import read_volume, write_volume

DATA = real_data(".")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return Segmenter(write_stub_model(tmp_path_factory.mktemp("m") / "stub.mosmos"), device="cpu")


def _world(shape, affine):
    idx = np.indices(shape).reshape(3, -1).T
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _affine(direction, spacing, origin):
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


OBLIQUE = Rotation.from_euler("xyz", [20, -15, 100], degrees=True).as_matrix()
CASES = {
    "ras": (np.eye(3), (0.8, 0.9, 2.5), (-30, -20, 10)),
    "lps": (np.diag([-1, -1, 1]), (0.8, 0.9, 2.5), (30, 20, 10)),
    "oblique": (OBLIQUE, (0.9, 1.1, 2.0), (-40, 30, 5)),
    "permuted": (np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]]), (2.5, 0.8, 0.9), (-10, 20, 30)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("order", ["xyz", "kji"])
def test_label_comes_back_at_its_world_position(segmenter, case, order):
    direction, spacing, origin = CASES[case]
    affine = _affine(direction, spacing, origin)
    shape = (72, 64, 30) if case != "permuted" else (30, 72, 64)
    center = affine[:3, :3] @ (np.array(shape) * np.array([0.6, 0.35, 0.55])) + affine[:3, 3]
    inside = (np.abs(_world(shape, affine) - center).max(axis=1) <= 10).reshape(shape)
    volume = np.where(inside, 1075, -1000).astype(np.int16)  # the stub threshold (37.5 HU) is halfway

    array = volume.T if order == "kji" else volume  # Slicer arrays are (k, j, i) with the IJK->RAS matrix
    res = segmenter.segment(array, affine, tags=["liver"], array_order=order)

    assert res.labelmap.shape == array.shape and res.labelmap.dtype == np.uint8
    np.testing.assert_array_equal(res.affine, affine)
    labels = res.labelmap.T if order == "kji" else res.labelmap
    found = labels == 1
    dice = 2 * (found & inside).sum() / (found.sum() + inside.sum())
    assert dice > 0.9
    centroid = _world(shape, affine)[found.reshape(-1)].mean(axis=0)
    assert np.linalg.norm(centroid - center) < 1.0
    assert res.organs[0]["volume_ml"] == pytest.approx(8.0, rel=0.15)  # a 20 mm cube
    attention = res.attention["liver"]
    assert attention.shape == array.shape and attention.dtype == np.float32
    att = attention.T if order == "kji" else attention
    assert 0 <= att.min() and att.max() <= 1 and att[inside].mean() > 5 * att[~inside].mean()


def test_model_grid_follows_monai_orientation_then_spacing():
    lps = _affine(np.diag([-1, -1, 1]), (0.75, 0.75, 1.0), (100, 80, -50))
    grid = model_grid((201, 101, 51), lps, (1.5, 1.5, 2.0))
    assert grid.shape == (101, 51, 26)
    assert nib.aff2axcodes(grid.affine) == ("R", "A", "S")
    # model voxel 0 sits on the input voxel that becomes voxel 0 after flipping to RAS
    np.testing.assert_allclose(grid.affine[:3, 3], lps[:3, :3] @ [200, 100, 0] + lps[:3, 3])
    np.testing.assert_allclose(np.abs(np.diag(grid.affine[:3, :3])), [1.5, 1.5, 2.0])


def test_real_ras_ct_label_agrees_with_input_threshold(tmp_path):
    vol = read_volume(DATA / "totalseg_example/example_ct.nii.gz")
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    body = {"type": "window", "a_min": -1000, "a_max": 0, "b_min": 0, "b_max": 1, "clip": True}
    seg = Segmenter(write_stub_model(tmp_path / "m.mosmos", spacing=(4, 4, 4), intensity=body), device="cpu")
    res = seg.segment(vol.array, vol.affine, tags="liver")
    assert res.labelmap.shape == vol.array.shape
    np.testing.assert_array_equal(res.affine, vol.affine)
    expected = vol.array > -500  # the stub's threshold: the body outline
    found = res.labelmap == 1
    assert 2 * (found & expected).sum() / (found.sum() + expected.sum()) > 0.97


def test_real_lps_mr_with_percentile_normalisation(tmp_path):
    vol = read_volume(DATA / "totalseg_example/example_mr_sm.nii.gz")
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    pct = {"type": "percentile", "lower": 0.5, "upper": 99.5, "b_min": 0, "b_max": 1, "clip": True}
    seg = Segmenter(write_stub_model(tmp_path / "m.mosmos", spacing=(3, 3, 3), modality="MR", intensity=pct),
                    device="cpu")
    res = seg.segment(vol.array, vol.affine, tags="liver", modality="MR")
    assert res.labelmap.shape == vol.array.shape and not res.notices
    lo, hi = np.percentile(vol.array, [0.5, 99.5])
    expected = vol.array > lo + 0.5 * (hi - lo)
    found = res.labelmap == 1
    assert 2 * (found & expected).sum() / (found.sum() + expected.sum()) > 0.8


def test_dicom_series_matches_its_nifti_label_grid():
    vol = read_volume(DATA / "totalseg_example/example_ct_dicom")  # JPEG-2000 lossless, decoded by Pillow
    assert vol.array.shape == (512, 512, 20) and vol.modality == "CT"
    seg_img = nib.load(DATA / "totalseg_example/example_seg_dicom.nii.gz")
    # Same voxel centres: the label file (LAS) is the DICOM grid with its rows reversed.
    to_dicom = np.linalg.inv(vol.affine) @ seg_img.affine
    np.testing.assert_allclose(to_dicom, np.array([[1, 0, 0, 0], [0, -1, 0, 511], [0, 0, 1, 0], [0, 0, 0, 1]]),
                               atol=1e-3)
    labels = np.asarray(seg_img.dataobj)[:, ::-1, :]
    hu = vol.array
    assert 40 < hu[labels == 5].mean() < 200     # liver (contrast CT)
    assert 40 < hu[labels == 1].mean() < 200     # spleen
    assert hu[labels == 52].mean() > 120         # contrast-filled aorta
    assert hu[labels == 0].mean() < -300


def test_dicom_and_nrrd_of_ct_3slice_share_one_grid(tmp_path):
    ct = read_volume(DATA / "dcmqi_ct3slice/ct-3slice")
    liver = read_volume(DATA / "dcmqi_ct3slice/liver_seg.nrrd")
    assert ct.array.shape == liver.array.shape == (512, 512, 3)
    np.testing.assert_allclose(ct.affine, liver.affine, atol=1e-3)
    assert nib.aff2axcodes(ct.affine) == ("L", "P", "S")
    assert ct.array.min() == -3024 and 0 < ct.array[liver.array == 1].mean() < 150

    seg = Segmenter(write_stub_model(tmp_path / "m.mosmos", spacing=(4, 4, 4)), device="cpu")
    res = seg.segment(ct.array, ct.affine, tags="liver")
    assert res.labelmap.shape == (512, 512, 3)
    for suffix in (".nrrd", ".nii.gz"):
        out = tmp_path / f"seg{suffix}"
        write_volume(out, res.labelmap, res.affine)
        back = read_volume(out)
        np.testing.assert_allclose(back.affine, ct.affine, atol=1e-5)
        np.testing.assert_array_equal(back.array, res.labelmap)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mosmos", "seg.nii.gz", "seg.nrrd"]


@pytest.mark.parametrize("kji", [False, True])
def test_attention_maps_map_back_as_trilinear_sampling_does(kji):
    """The attention maps reach the input grid by three passes of 1D linear interpolation (separable, as the
    model grid is the input's scaled per axis): the trilinear samples of grid_sample at every input voxel,
    within the float16 rounding the maps keep, for a permuted, flipped and oblique-free grid in either array
    order."""
    import torch

    from mosmos.inference.geometry import _coords, from_oriented, resample
    from mosmos.inference.segmenter import AttentionMaps, half_precision

    affine = np.array([[0, -1.1, 0, 5], [0, 0, 2.2, 3], [-0.9, 0, 0, 1], [0, 0, 0, 1.0]])
    grid = model_grid((50, 41, 37), affine, (1.5, 1.5, 2.0))
    assert grid.perm != (0, 1, 2) and any(grid.flip)
    maps = torch.rand(2, *grid.shape, generator=torch.Generator().manual_seed(0)).half()
    got = AttentionMaps(["a", "b"], maps, grid, kji)["b"]

    samples = resample(maps[1:2], [_coords(grid.oriented_shape[j], 1 / grid.ratio[j], "cpu") for j in range(3)])
    expected = samples[0].clamp(0, 1).numpy()
    half_precision(expected)
    expected = from_oriented(expected, grid)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected.T if kji else expected, atol=2 ** -11)
    assert np.mean(got == (expected.T if kji else expected)) > 0.99


def test_staged_volumes_are_written_on_a_thread_all_or_none(tmp_path):
    """StagedWriter writes volumes on a worker thread while the caller makes the next one: a volume that
    cannot be written fails the commit with one line naming it, and nothing is left, neither the volumes
    written before it nor any temporary; otherwise all appear at once, readable."""
    from mosmos.errors import MosmosError
    from mosmos.inference.io import StagedWriter

    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    maps = [np.random.default_rng(i).integers(0, 65536, (20, 16, 12), dtype=np.uint16) for i in range(3)]
    (tmp_path / "blocked").write_text("a file where a folder should be")
    with pytest.raises(MosmosError, match=r"blocked/c\.nii\.gz: cannot write"):
        with StagedWriter() as writer:
            writer.volume(tmp_path / "a.nii.gz", maps[0], affine, scale=1 / 65535)
            writer.volume(tmp_path / "b.nrrd", maps[1], affine, scale=1 / 65535)
            writer.volume(tmp_path / "blocked" / "c.nii.gz", maps[2], affine, scale=1 / 65535)
            writer.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked"]

    with StagedWriter() as writer:
        for name, a in zip(("a.nii.gz", "b.nii", "c.nrrd"), maps):
            writer.volume(tmp_path / name, a, affine, scale=1 / 65535)
        assert not (tmp_path / "a.nii.gz").exists()
        writer.commit()
    for name, a in zip(("a.nii.gz", "b.nii", "c.nrrd"), maps):
        np.testing.assert_allclose(read_volume(tmp_path / name).array, a / 65535, rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii", "blocked", "c.nrrd"]
