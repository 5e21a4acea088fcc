"""The hand-written numerics pinned to the library they replace, on the repository's real data where there is
some: mosmos.inference.sliding's sliding window against MONAI's sliding_window_inference (same network weights,
gaussian blending); geometry.py's reorientation and resampling against MONAI's Orientation, Spacing and
SpatialResample (the training transforms); io.py's NIfTI, NRRD and DICOM readers against nibabel, pynrrd (through
MONAI's NrrdReader) and highdicom: the same array and the same voxel -> RAS affine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference
from monai.transforms import LoadImage, Orientation, Spacing, SpatialResample

from helpers import real_data
from mosmos.inference.geometry import (from_oriented, model_grid, nearest_model_indices, oriented_view,
                                       resample_to_input, resample_to_model, to_oriented)
from mosmos.inference.io import read_volume
from mosmos.inference.sliding import gaussian_importance, sliding_window
from mosmos.inference.volume import LPS_TO_RAS

ROI = (16, 16, 16)


def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(1, 3, 3, padding=1).eval()


def test_sliding_window_blends_as_monai_does_with_the_same_weights():
    """Same windows, same gaussian weights -> MONAI's result within float32 rounding (1e-5; measured 4e-7),
    on a volume that needs a flush last window on each axis, and on one smaller than the window (padded)."""
    net, weights = network(), gaussian_importance(ROI, "cpu")
    for shape in ((37, 30, 21), (10, 12, 9)):
        image = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours, maps = sliding_window(image[0], ROI, lambda w: (net(w), None), 3, 0, overlap=0.5, batch_size=2)
            monai = sliding_window_inference(image, ROI, 2, net, overlap=0.5, mode="gaussian", roi_weight_map=weights,
                                             padding_mode="constant", cval=0.0)
        assert maps is None and ours.shape == monai.shape[1:]
        torch.testing.assert_close(ours, monai[0], rtol=0, atol=1e-5)


def test_the_gaussian_weights_are_monais_up_to_the_centre_of_an_even_window():
    """MONAI's gaussian (sigma = roi / 8) peaks on voxel r // 2 of an even window, ours between the two middle
    voxels (symmetric, so mirrored windows weigh alike): at most 0.1 apart (measured 0.089 for 16 cubed), the
    same floor, and equal on an odd window's centre line."""
    ours = gaussian_importance(ROI, "cpu")
    monai = compute_importance_map(ROI, mode="gaussian", sigma_scale=0.125)
    assert (ours - monai).abs().max() < 0.1
    assert ours.min() == monai.min() == torch.tensor(1e-3)
    odd = (15, 15, 15)
    torch.testing.assert_close(gaussian_importance(odd, "cpu"),
                               compute_importance_map(odd, mode="gaussian", sigma_scale=0.125), rtol=0, atol=1e-2)


# --- geometry.py against MONAI's Orientation("RAS") then Spacing (the training transforms) ---------------------

def real_volumes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """float32 arrays and affines: the real LPS MR and the real RAS CT (30 slices), and the MR with its axes
    permuted (k, i, j) and its direction turned 10 degrees about S (oblique), which exercise the permutation."""
    out = {}
    for name in ("example_mr_sm", "example_ct_sm"):
        vol = read_volume(real_data(f"totalseg_example/{name}.nii.gz"))
        out[name] = (vol.array.astype(np.float32), vol.affine)
    mr, affine = out["example_mr_sm"]
    turn = np.eye(4)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    turn[:2, :2] = [[c, -s], [s, c]]
    out["mr_permuted_oblique"] = (np.ascontiguousarray(mr.transpose(2, 0, 1)), turn @ affine[:, [2, 0, 1, 3]])
    return out


VOLUMES = real_volumes()
# (4, 2.5, 5) mm: no half-voxel cases; (1.5, 1.5, 2) mm: the 3 mm slices land on halves (x = (n - 1) * 1.5 is 28.5
# for the MR's 20, 43.5 for the CT's 30), where the grid takes MONAI's round(x + 1) voxels (a half to even), not
# round(x) + 1
SPACINGS = [(4.0, 2.5, 5.0), (1.5, 1.5, 2.0)]


def monai_model_grid(array: np.ndarray, affine: np.ndarray, spacing) -> MetaTensor:
    image = MetaTensor(torch.from_numpy(array)[None], affine=torch.from_numpy(affine))
    oriented = Orientation("RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
    return Spacing(pixdim=spacing, mode="bilinear")(oriented)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("name", list(VOLUMES))
def test_the_model_grid_and_its_image_are_monais_orientation_then_spacing(name, spacing):
    """Same shape, same affine (1e-6 mm), and the same trilinear samples within 0.05 (in units of the image:
    HU for the CT): both are float32 grid_sample with border padding, ours from per-axis coordinates normalised
    in float32, MONAI's from a float64 affine, so a sample's position differs by float32 rounding of up to 1e-5
    voxel, times gradients of up to ~2000 HU a voxel (measured 0.012 HU on the CT, 0.007 on the MR)."""
    array, affine = VOLUMES[name]
    grid = model_grid(array.shape, affine, spacing)
    ours = resample_to_model(to_oriented(torch.from_numpy(array), grid)[None], grid)
    theirs = monai_model_grid(array, affine, spacing)
    assert grid.shape == tuple(theirs.shape[1:])
    np.testing.assert_allclose(grid.affine, theirs.affine.numpy(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, theirs.as_tensor(), rtol=0, atol=0.05)


def test_mapping_back_to_the_input_grid_is_monais_spatial_resample():
    """Model grid -> input grid, for the permuted oblique MR: resample_to_input's three passes of 1D linear
    interpolation are MONAI's bilinear SpatialResample to the input's affine within 0.01 (float32 rounding;
    measured 0.0014 of the image's 880 range); nearest_model_indices (labels) picks MONAI's nearest voxel
    everywhere except where an input voxel lies exactly halfway between two model voxels (a tie either may
    break by float32 rounding: input x-index i of 3 mm voxels at 4 mm, i = 2 mod 4)."""
    array, affine = VOLUMES["mr_permuted_oblique"]
    grid = model_grid(array.shape, affine, SPACINGS[0])
    model = monai_model_grid(array, affine, SPACINGS[0])

    ours = np.zeros(array.shape, np.float32)
    resample_to_input(model[0].as_tensor(), grid, oriented_view(ours, grid))
    back = SpatialResample(mode="bilinear", padding_mode="border")(model, dst_affine=torch.from_numpy(affine),
                                                                   spatial_size=array.shape)
    np.testing.assert_allclose(ours, back[0].numpy(), rtol=0, atol=0.01)

    index = MetaTensor(torch.arange(int(np.prod(grid.shape)), dtype=torch.float64).reshape(1, *grid.shape),
                       affine=model.affine)
    ours = from_oriented(index[0].numpy()[np.ix_(*nearest_model_indices(grid))], grid)
    theirs = SpatialResample(mode="nearest", padding_mode="border", dtype=torch.float64)(
        index, dst_affine=torch.from_numpy(affine), spatial_size=array.shape)[0].numpy()
    halves = [np.abs(np.arange(n) / r % 1 - 0.5) < 1e-6 for n, r in zip(grid.oriented_shape, grid.ratio)]
    tie = from_oriented(halves[0][:, None, None] | halves[1][None, :, None] | halves[2][None, None, :], grid)
    assert 0 < tie.mean() < 0.5
    np.testing.assert_array_equal(ours[~tie], theirs[~tie])


# --- io.py's readers against nibabel, pynrrd and highdicom ------------------------------------------------------

def on_grid_of(affine: np.ndarray, shape, other_affine: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` (voxel -> RAS ``other_affine``) laid on the grid of (``affine``, ``shape``), failing unless the two
    grids hold the same voxel centres (1e-4 voxel) in some axis order and direction: a world-coordinate compare."""
    to_ours = np.linalg.solve(affine, other_affine)
    axes, offset = np.rint(to_ours[:3, :3]), np.rint(to_ours[:3, 3])
    np.testing.assert_allclose(to_ours[:3], np.c_[axes, offset], rtol=0, atol=1e-4)
    assert sorted(np.abs(axes).sum(axis=0)) == [1, 1, 1] == sorted(np.abs(axes).sum(axis=1))
    target = (axes @ np.indices(other.shape).reshape(3, -1) + offset[:, None]).astype(np.intp)
    out = np.full(shape, np.nan)
    out[tuple(target)] = other.reshape(-1)
    return out


@pytest.mark.parametrize("name", ["totalseg_example/example_ct.nii.gz", "totalseg_example/example_mr_sm.nii.gz"])
def test_the_nifti_reader_is_nibabels_and_monais(name):
    """Same values as nibabel's get_fdata and MONAI's NibabelReader (exactly; ours keeps the stored integers), the
    same affine (exactly: all three take nibabel's best affine)."""
    import nibabel as nib

    ours = read_volume(real_data(name))
    image = nib.load(real_data(name))
    monai = LoadImage(reader="NibabelReader", image_only=True)(str(real_data(name)))
    assert ours.array.dtype.kind == "i"
    np.testing.assert_array_equal(ours.array, image.get_fdata())
    np.testing.assert_array_equal(ours.array, monai.numpy())
    np.testing.assert_array_equal(ours.affine, image.affine)
    np.testing.assert_array_equal(ours.affine, monai.affine.numpy())


@pytest.mark.parametrize("name", ["liver_spine_seg.nrrd", "heart_seg.nrrd"])
def test_the_nrrd_reader_is_pynrrds_with_monais_affine(name):
    """Same array as pynrrd, the same RAS affine as MONAI's NrrdReader (LPS turned RAS) within 1e-9 mm."""
    import nrrd

    path = real_data(f"dcmqi_ct3slice/{name}")
    ours = read_volume(path)
    array, _ = nrrd.read(str(path))
    monai = LoadImage(reader="NrrdReader", image_only=True)(str(path))
    assert ours.array.dtype == array.dtype
    np.testing.assert_array_equal(ours.array, array)
    np.testing.assert_allclose(ours.affine, monai.affine.numpy(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("folder", ["dcmqi_ct3slice/ct-3slice", "totalseg_example/example_ct_dicom"])
def test_the_dicom_series_reader_is_highdicoms(folder):
    """highdicom's volume of the series (its own slice sorting, rescale and LPS affine, slices first) holds the
    same HU at the same voxel centres (1e-4 voxel) as ours: the uncompressed GE series and the JPEG 2000 one."""
    import highdicom
    import pydicom

    ours = read_volume(real_data(folder))
    datasets = [pydicom.dcmread(f) for f in sorted(real_data(folder).iterdir())]
    for ds in datasets:  # the JPEG 2000 series carries its SOP class in the file meta only, which highdicom skips
        ds.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
    theirs = highdicom.get_volume_from_series(datasets)
    np.testing.assert_array_equal(ours.array, on_grid_of(ours.affine, ours.array.shape, LPS_TO_RAS @ theirs.affine,
                                                         theirs.array))
