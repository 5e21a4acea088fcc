"""DICOM in and out: series of every transfer syntax a PACS sends (built from pydicom's bundled test files,
or encoded with python-gdcm where none is bundled), folders of several series, bad series with one-line
errors naming the file, and DICOM SEG and Parametric Maps written from the real 3-slice CT and read back with
highdicom and pydicom (Testing/test_dicom_readers.py: dcmqi, OHIF's readers and dciodvfy)."""

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file

from dicom_series import MR_SMALL, gdcm_encode, make_series
from helpers import REAL_DATA
from inference_stub import write_stub_model
from mosmos.cli import main
from mosmos.errors import MosmosError
from mosmos.inference.dicomseg import segmentation_dataset
from mosmos.inference.io import read_volume

CT3 = REAL_DATA / "dcmqi_ct3slice" / "ct-3slice"


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """MR_small in the syntaxes pydicom does not bundle it in, encoded by python-gdcm."""
    root = tmp_path_factory.mktemp("encoded")
    for syntax in ("JPEGLosslessProcess14", "JPEGLosslessProcess14_1"):
        gdcm_encode(MR_SMALL, root / f"{syntax}.dcm", syntax)
    # JPEG baseline holds 8-bit samples only.
    ds = pydicom.dcmread(MR_SMALL)
    ds.PixelData = (ds.pixel_array // 16).clip(0, 255).astype(np.uint8).tobytes()
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.save_as(root / "8bit.dcm", enforce_file_format=True)
    gdcm_encode(root / "8bit.dcm", root / "JPEGBaselineProcess1.dcm", "JPEGBaselineProcess1")
    return root


LOSSLESS = {   # file -> its transfer syntax (as the file says), all holding MR_small's pixels
    "MR_small_implicit.dcm": uid.ImplicitVRLittleEndian,
    "MR_small_bigendian.dcm": uid.ExplicitVRBigEndian,
    "MR_small_RLE.dcm": uid.RLELossless,
    "MR_small_jp2klossless.dcm": uid.JPEG2000Lossless,
    "MR_small_jpeg_ls_lossless.dcm": uid.JPEGLSLossless,
    "JPEGLosslessProcess14.dcm": uid.JPEGLossless,
    "JPEGLosslessProcess14_1.dcm": uid.JPEGLosslessSV1,
}


@pytest.mark.parametrize("name", [*LOSSLESS, "deflate"])
def test_lossless_syntaxes_decode_to_the_reference_pixels(name, encoded, tmp_path):
    if name == "deflate":
        files = make_series(MR_SMALL, tmp_path / "s", transfer_syntax=uid.DeflatedExplicitVRLittleEndian)
        syntax = uid.DeflatedExplicitVRLittleEndian
    else:
        src = encoded / name if (encoded / name).exists() else get_testdata_file(name)
        files = make_series(src, tmp_path / "s")
        syntax = LOSSLESS[name]
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    vol = read_volume(tmp_path / "s")
    reference = pydicom.dcmread(MR_SMALL).pixel_array.T.astype(np.int32)
    assert vol.array.shape == (64, 64, 3) and vol.modality == "MR"
    for k in range(3):
        np.testing.assert_array_equal(vol.array[:, :, k], reference)
    np.testing.assert_allclose(np.diag(vol.affine)[:3], [-0.3125, -0.3125, 2.5])
    assert [h.SOPInstanceUID for h in vol.source.headers] == [
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]


@pytest.mark.parametrize("name", ["JPEGBaselineProcess1.dcm", "JPEGLSNearLossless_16.dcm"])
def test_lossy_syntaxes_decode(name, encoded, tmp_path):
    src = encoded / name if (encoded / name).exists() else get_testdata_file(name)
    make_series(src, tmp_path / "s")
    vol = read_volume(tmp_path / "s")
    ds = pydicom.dcmread(src)
    assert vol.array.shape == (ds.Columns, ds.Rows, 3)
    if name == "JPEGBaselineProcess1.dcm":   # lossy: close to the 8-bit image it was encoded from
        original = pydicom.dcmread(encoded / "8bit.dcm").pixel_array.T.astype(float)
        assert np.abs(vol.array[:, :, 1] - original).mean() < 2
    else:
        assert vol.array.std() > 0 and np.array_equal(vol.array[:, :, 0], vol.array[:, :, 2])


def test_12_bit_jpeg_extended_decodes_or_names_the_optional_decoder(tmp_path):
    from pydicom.pixels import get_decoder

    make_series(get_testdata_file("JPGExtended.dcm"), tmp_path / "s")
    if "pylibjpeg" in get_decoder(uid.JPEGExtended12Bit).available_plugins:
        vol = read_volume(tmp_path / "s")
        assert vol.array.shape == (256, 1024, 3) and vol.array.std() > 0
    else:
        with pytest.raises(MosmosError, match=r"IM0000: cannot decode the pixel data \(JPEG Extended \(Process 2 "
                                              r"and 4\): 12-bit JPEG needs .*pip install 'mosmos\[jpeg12\]'\)$"):
            read_volume(tmp_path / "s")


def test_two_series_largest_by_default_choose_with_series(tmp_path, capsys):
    folder = tmp_path / "two"
    make_series(MR_SMALL, folder / "a", n=4, series_uid="1.2.3.4")
    make_series(get_testdata_file("MR_small_RLE.dcm"), folder / "b", n=3, series_uid="1.2.3.5", spacing=4.0)
    vol = read_volume(folder)
    assert vol.source.series_uid == "1.2.3.4" and vol.array.shape[2] == 4
    assert "segmenting the largest, 1.2.3.4 (MR, 4 images)" in vol.source.notices[0]
    assert read_volume(folder, "1.2.3.5").array.shape[2] == 3
    with pytest.raises(MosmosError, match=r"no series 9\.9; the folder holds 1\.2\.3\.4 \(MR, 4 images\); "
                                          r"1\.2\.3\.5 \(MR, 3 images\)"):
        read_volume(folder, "9.9")
    make_series(MR_SMALL, folder / "c", n=4, series_uid="1.2.3.6")
    with pytest.raises(MosmosError, match="3 series of equal size; choose one with --series UID: 1.2.3.4"):
        read_volume(folder)


def _bad(tmp_path, change=None, n=3):
    files = make_series(MR_SMALL, tmp_path / "bad", n=n)
    if change is not None:
        change(files)
    return tmp_path / "bad", files


def _edit(path, **attrs):
    ds = pydicom.dcmread(path)
    for keyword, value in attrs.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def test_bad_series_give_one_line_errors_naming_the_file(tmp_path):
    cases = {
        "no_pixel_spacing": (lambda f: _edit(f[1], PixelSpacing=None), 1, "no Pixel Spacing"),
        "localizer": (lambda f: _edit(f[2], ImageOrientationPatient=[0, 1, 0, 0, 0, -1],
                                      ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]), 2,
                      "image orientation differs from the rest of series .* \\(a localizer in the series\\?\\)"),
        "mixed_sizes": (lambda f: _edit(f[1], Rows=32, PixelData=b"\0" * 32 * 64 * 2), 1, "image size 32x64 differs"),
        "duplicate": (lambda f: _edit(f[2], ImagePositionPatient=[-10.0, -20.0, 7.5]), 2, "same slice position as"),
        "missing_slice": (lambda f: f[2].unlink(), 3, "uneven slice spacing .*missing slices\\?"),
        "truncated": (lambda f: f[1].write_bytes(f[1].read_bytes()[:-3000]), 1, "cannot decode the pixel data"),
        "enhanced": (lambda f: _edit(f[0], NumberOfFrames=3, SOPClassUID=uid.EnhancedMRImageStorage), 0,
                     "Enhanced MR Image Storage \\(3 frames in one file\\) is not supported"),
    }
    for name, (change, index, message) in cases.items():
        folder, files = _bad(tmp_path / name, change, n=4 if name == "missing_slice" else 3)
        with pytest.raises(MosmosError, match=message) as e:
            read_volume(folder)
        text = str(e.value)
        assert "\n" not in text and text.startswith(str(files[index])), (name, text)


def test_not_dicom_and_dicomdir_alone(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not an image")
    (tmp_path / "notes" / "b.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(MosmosError, match=r"notes: no DICOM image files found \(2 other files\)"):
        read_volume(tmp_path / "notes")
    (tmp_path / "dicomdir").mkdir()
    dicomdir = tmp_path / "dicomdir" / "DICOMDIR"
    shutil.copy(get_testdata_file("DICOMDIR"), dicomdir)
    with pytest.raises(MosmosError, match="DICOMDIR: a DICOMDIR alone, without the image files it indexes"):
        read_volume(tmp_path / "dicomdir")


@pytest.fixture(scope="module")
def ct3_seg(tmp_path_factory):
    """`mosmos segment` of the real 3-slice CT to a DICOM SEG, through the command line."""
    root = tmp_path_factory.mktemp("seg")
    # epsilon 0.5: the stub's maps (pooled intensities) then give probabilities that vary over the 3 thin slices
    model = write_stub_model(root / "stub.mosmos", roi=(16, 16, 16), spacing=(4, 4, 4), epsilon=0.5)
    code = main(["segment", str(CT3), "--model", model, "--tags", "liver, spleen", "--output",
                 str(root / "out" / "seg.dcm"), "--device", "cpu", "--volumes", str(root / "v.json"),
                 "--attention", str(root / "maps")])
    assert code == 0
    labels = main(["segment", str(CT3), "--model", model, "--tags", "liver, spleen", "--output",
                   str(root / "labels.nrrd"), "--device", "cpu", "--attention", str(root / "maps_nrrd")])
    assert labels == 0
    return root, model


def test_seg_references_the_series_and_matches_the_label_map(ct3_seg):
    import highdicom as hd

    root, model = ct3_seg
    ct = read_volume(CT3)
    labels = read_volume(root / "labels.nrrd").array
    assert set(np.unique(labels)) == {0, 1}       # the stub finds bright tissue as liver, no spleen
    seg = hd.seg.segread(root / "out" / "seg.dcm")
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]     # organs without voxels left out
    source = [h for h in ct.source.headers]
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID and seg.PatientID == source[0].PatientID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    uids = [h.SOPInstanceUID for h in source]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    np.testing.assert_array_equal(pixels.transpose(2, 1, 0), labels)      # voxel for voxel on (X, Y, Z)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, source[uids.index(ref)].ImagePositionPatient)
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, source[0].PixelSpacing)
    np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                               source[0].ImageOrientationPatient)

    raw = pydicom.dcmread(root / "out" / "seg.dcm")
    segment = raw.SegmentSequence[0]
    assert (segment.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("10200004", "SCT")
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "MOSMOS" and algorithm.AlgorithmVersion
    import hashlib

    digest = hashlib.sha256(Path(model).read_bytes()).hexdigest()
    assert f"model SHA-256={digest}" in algorithm.AlgorithmParameters
    assert raw.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian and raw.preamble is not None
    # The SEG's organ volumes and QC beside it (Testing/test_dicom_readers.py reads it with dcmqi); no temporary left.
    assert sorted(p.name for p in (root / "out").iterdir()) == ["seg.dcm", "seg_sr.dcm"]


def test_seg_laterality_modifier_and_open_set_codes(tmp_path):
    ct = read_volume(CT3)
    labels = np.zeros(ct.array.shape, np.uint8)
    labels[100:200, 100:200, 0:2] = 1
    labels[300:350, 300:350, 1:3] = 2
    model = tmp_path / "m.bin"
    model.write_bytes(b"model")
    ds = segmentation_dataset(ct.source, labels, [{"name": "left kidney", "label": 1, "color": [46, 138, 184]},
                                                  {"name": "duodenum", "label": 2, "color": [170, 80, 190]}], model)
    kidney, duodenum = ds.SegmentSequence
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodeValue, modifier.CodeMeaning) == ("7771000", "Left")
    assert duodenum.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99MOSMOS"
    assert ds.NumberOfFrames == 4      # frames only where a segment has voxels


def test_attention_maps_as_parametric_maps_on_the_series_grid(ct3_seg):
    import highdicom as hd

    root, _ = ct3_seg
    assert sorted(p.name for p in (root / "maps").iterdir()) == ["liver.dcm", "spleen.dcm"]
    ct = read_volume(CT3)
    series = set()
    for tag in ("liver", "spleen"):
        pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(root / "maps" / f"{tag}.dcm"))
        assert pm.SOPClassUID == uid.ParametricMapStorage and tag in pm.ContentDescription
        assert pm.FrameOfReferenceUID == ct.source.headers[0].FrameOfReferenceUID
        series.add(pm.SeriesInstanceUID)
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1, 0)
        # Frame k lies at slice k of the series (Testing/test_dicom_readers.py reads it as the readers do).
        positions = [list(map(float, f.PlanePositionSequence[0].ImagePositionPatient))
                     for f in pm.PerFrameFunctionalGroupsSequence]
        assert positions == [list(map(float, h.ImagePositionPatient)) for h in ct.source.headers]
        values = pm.pixel_array.transpose(2, 1, 0)
        same = read_volume(root / "maps_nrrd" / f"{tag}.nrrd").array        # the maps of the NRRD run
        assert values.dtype == np.float32 and same.std() > 1e-3
        np.testing.assert_allclose(values, same, atol=8e-6)    # the 16-bit steps of the maps (1 / 65535)
    assert len(series) == 1


def test_seg_output_refusals_exit_1_and_write_nothing(ct3_seg, tmp_path, capsys):
    root, model = ct3_seg
    series = tmp_path / "series"
    shutil.copytree(CT3, series)
    before = sorted(p.name for p in series.iterdir())
    cases = [
        ([str(series), "--output", str(series / "seg.dcm")], "inside the input DICOM folder"),
        ([str(series), "--output", str(tmp_path / "s.nii.gz"), "--attention", str(series / "att")],
         "inside the input DICOM folder"),
        ([str(REAL_DATA / "dcmqi_ct3slice" / "liver_seg.nrrd"), "--output", str(tmp_path / "o.dcm")],
         "DICOM SEG output needs a DICOM series as input"),
        ([str(tmp_path / "empty_in"), "--output", str(tmp_path / "o.dcm")], "no DICOM image files found"),
        # A real anonymised export with its Study and Series Instance UIDs emptied: refused before inference.
        ([str(REAL_DATA / "totalseg_example" / "example_ct_dicom"), "--output", str(tmp_path / "o.dcm")],
         "no Study Instance UID, so a DICOM SEG cannot reference this series"),
    ]
    (tmp_path / "empty_in").mkdir()
    (tmp_path / "empty_in" / "x.txt").write_text("x")
    for argv, message in cases:
        code = main(["segment", *argv, "--model", model, "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 1 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in series.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_in", "series"]


def test_seg_into_a_folder_is_named_by_its_sop_instance_uid(ct3_seg, tmp_path, capsys):
    _, model = ct3_seg
    code = main(["segment", str(CT3), "--model", model, "--tags", "liver", "--output", str(tmp_path) + "/",
                 "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    written = {pydicom.dcmread(p).Modality: p for p in tmp_path.iterdir()}
    assert sorted(written) == ["SEG", "SR"]     # the SEG and its report, each named by its SOP Instance UID
    for path in written.values():
        assert path.name == pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID + ".dcm"
    assert f"DICOM SEG: {written['SEG']}" in out and f"DICOM SR (organ volumes and QC): {written['SR']}" in out


def test_a_file_where_the_report_goes_is_refused_before_any_work(ct3_seg, tmp_path, capsys):
    _, model = ct3_seg
    (tmp_path / "seg_sr.dcm").write_text("someone's notes")
    code = main(["segment", str(CT3), "--model", model, "--output", str(tmp_path / "seg.dcm"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "seg_sr.dcm: exists and is not mosmos output (DICOM SR)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg_sr.dcm"]



def test_results_copied_next_to_the_series_are_not_read_as_images(ct3_seg, tmp_path):
    root, _ = ct3_seg
    shutil.copytree(CT3, tmp_path / "study")
    shutil.copy(root / "out" / "seg.dcm", tmp_path / "study" / "seg.dcm")
    shutil.copy(root / "out" / "seg_sr.dcm", tmp_path / "study" / "seg_sr.dcm")
    shutil.copytree(root / "maps", tmp_path / "study" / "maps")
    vol = read_volume(tmp_path / "study")
    assert vol.array.shape == (512, 512, 3) and vol.source.notices == []


def test_gantry_tilt_is_kept_and_one_file_names_its_series(tmp_path):
    files = make_series(MR_SMALL, tmp_path / "tilt")
    for k, f in enumerate(files):
        _edit(f, ImagePositionPatient=[-10.0, -20.0 + 0.5 * k, 5.0 + 2.5 * k])   # positions drift along y
    make_series(MR_SMALL, tmp_path / "tilt" / "other", n=2)
    vol = read_volume(files[1])      # one file: its own series, although another one is there too
    assert vol.source.series_uid == pydicom.dcmread(files[0]).SeriesInstanceUID and vol.source.notices == []
    np.testing.assert_allclose(vol.affine[:3, 2], [0.0, -0.5, 2.5])   # RAS of LPS (0, 0.5, 2.5): y flips sign
    labels = np.zeros(vol.array.shape, np.uint8)
    labels[10:20, 10:20, :] = 1
    model = tmp_path / "m.bin"
    model.write_bytes(b"m")
    ds = segmentation_dataset(vol.source, labels, [{"name": "liver", "label": 1, "color": [1, 2, 3]}], model)
    positions = [list(map(float, f.PlanePositionSequence[0].ImagePositionPatient))
                 for f in ds.PerFrameFunctionalGroupsSequence]
    assert sorted(positions) == [[-10.0, -20.0 + 0.5 * k, 5.0 + 2.5 * k] for k in range(3)]   # the tilted ones
