"""The DICOM SEG and attention Parametric Maps of `mosmos segment`, opened by the readers people use, each compared
voxel by voxel with the NIfTI outputs of a run on the same series and model: dcmqi (segimage2itkimage and
paramap2itkimage, through which Slicer's QuantitativeReporting and its parametric-map plugin load them), OHIF's
readers (dcmjs and @cornerstonejs/adapters under Node, Testing/node/read_dicom.mjs), highdicom, and dicom3tools'
dciodvfy; the SR of the organs' volumes and QC beside the SEG by dcmqi's tid1500reader and dciodvfy. The series is the real 20-slice CT of Testing/Data/totalseg_example with study and series UIDs added; the
label values of the model (4 and 7) are not 1..N, and its maps change along z, so a flip would show."""

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from helpers import REAL_DATA
from inference_stub import write_stub_model
from mosmos.cli import main
from mosmos.inference.io import read_volume

NODE = Path(__file__).parent / "node"
SERIES = REAL_DATA / "totalseg_example" / "example_ct_dicom"
LABELS = {"0": "background", "4": "liver", "7": "right kidney"}
TAGS = ["liver", "right kidney"]
MAP_TOLERANCE = 1e-3       # the NIfTI maps hold 16-bit steps of the probability


def _tool(name: str) -> str:
    """A dcmqi binary of the test extra (pip install dcmqi), beside this Python or on the PATH."""
    import sys

    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} not found: pip install dcmqi (the test extra)"
    return found


def _run(argv, cwd=None) -> str:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The series with UIDs, one run to DICOM (SEG and maps) and one to NIfTI, with the stub model."""
    root = tmp_path_factory.mktemp("readers")
    series = root / "series"
    series.mkdir()
    study, series_uid = generate_uid(), generate_uid()
    for f in sorted(SERIES.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        # The export kept the SOP UIDs in the file meta information only.
        meta = ds.file_meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.save_as(series / f.name, enforce_file_format=True)
    # epsilon 0.5: the stub's maps (pooled intensities) vary smoothly, over the slices too
    model = write_stub_model(root / "stub.mosmos", labels=LABELS, roi=(16, 16, 16), spacing=(4, 4, 4), epsilon=0.5)
    common = [str(series), "--model", model, "--tags", ", ".join(TAGS), "--device", "cpu"]
    assert main(["segment", *common, "--output", str(root / "dicom" / "seg.dcm"),
                 "--attention", str(root / "dicom" / "maps"), "--volumes", str(root / "volumes.json")]) == 0
    assert main(["segment", *common, "--output", str(root / "nifti" / "labels.nii.gz"),
                 "--attention", str(root / "nifti" / "maps")]) == 0
    ct = read_volume(series)
    labels = read_volume(root / "nifti" / "labels.nii.gz")
    np.testing.assert_allclose(labels.affine, ct.affine, atol=1e-4)
    maps = {tag: read_volume(root / "nifti" / "maps" / f"{tag.replace(' ', '_')}.nii.gz").array for tag in TAGS}
    # Segments are numbered 1..N in ascending label value (the standard and dcmqi allow no gaps).
    values = [v for v in sorted(int(k) for k in LABELS if k != "0") if np.any(labels.array == v)]
    numbers = np.zeros(max(values) + 1, np.uint16)
    numbers[values] = np.arange(1, len(values) + 1)
    return SimpleNamespace(root=root, series=series, ct=ct, labels=labels.array, maps=maps,
                           segments=numbers[labels.array], names={n: LABELS[str(v)] for n, v in enumerate(values, 1)},
                           seg=root / "dicom" / "seg.dcm", report=root / "dicom" / "seg_sr.dcm",
                           organs=json.loads((root / "volumes.json").read_text())["organs"],
                           map_files={tag: root / "dicom" / "maps" / f"{tag.replace(' ', '_')}.dcm" for tag in TAGS})


def _on_grid(volume, ct) -> np.ndarray:
    """A reader's volume on the CT's grid: same axes and spacing, maybe fewer slices (a SEG without empty frames)."""
    np.testing.assert_allclose(volume.affine[:3, :3], ct.affine[:3, :3], atol=1e-3)
    offset = np.linalg.solve(ct.affine[:3, :3], volume.affine[:3, 3] - ct.affine[:3, 3])
    start = np.round(offset).astype(int)
    np.testing.assert_allclose(offset, start, atol=1e-2)
    out = np.zeros(ct.array.shape, volume.array.dtype)
    out[tuple(slice(s, s + n) for s, n in zip(start, volume.array.shape))] = volume.array
    return out


def test_a_flip_in_z_would_show(run):
    assert set(np.unique(run.labels)) == {0, 4}        # the stub finds bright tissue as liver (4), no kidney
    assert np.any(run.labels != run.labels[:, :, ::-1])
    for tag, values in run.maps.items():
        assert values.std() > 0.05, tag
        assert np.abs(values - values[:, :, ::-1]).max() > 0.1, tag


def test_dcmqi_reads_the_seg(run, tmp_path):
    _run([_tool("segimage2itkimage"), "--inputDICOM", run.seg, "--outputDirectory", tmp_path,
          "--outputType", "nifti", "--mergeSegments"])
    meta = json.loads((tmp_path / "meta.json").read_text())
    segments = [s for group in meta["segmentAttributes"] for s in group]
    assert {s["labelID"]: s["SegmentLabel"] for s in segments} == run.names
    assert [s["SegmentDescription"] for s in segments] == ["label value 4"]
    assert "ContentCreatorName" in meta
    np.testing.assert_array_equal(_on_grid(read_volume(tmp_path / "1.nii.gz"), run.ct), run.segments)


def test_dcmqi_reads_the_report_of_volumes_and_qc(run, tmp_path):
    """The SR as Slicer's QuantitativeReporting reads it (dcmqi's tid1500reader): one measurement group per organ,
    the found ones on their SEG segment with the volume the SEG's voxels give, each with its QC status and reasons
    as `--volumes` has them."""
    _run([_tool("tid1500reader"), "--inputDICOM", run.report, "--outputMetadata", tmp_path / "sr.json"])
    meta = json.loads((tmp_path / "sr.json").read_text())
    groups = {g["TrackingIdentifier"]: g for g in meta["Measurements"]}
    assert sorted(groups) == sorted(TAGS) and [o["name"] for o in run.organs] == TAGS
    seg_uid = str(pydicom.dcmread(run.seg, stop_before_pixels=True).SOPInstanceUID)
    assert meta["compositeContext"] == [seg_uid] and meta["procedureReported"]["CodeValue"] == "25045-6"
    voxel_ml = abs(np.linalg.det(run.ct.affine[:3, :3])) / 1000
    for organ in run.organs:
        group = groups[organ["name"]]
        evaluations = {e["conceptCode"]["CodeValue"]: [] for e in group["qualitativeEvaluations"]}
        for e in group["qualitativeEvaluations"]:
            evaluations[e["conceptCode"]["CodeValue"]].append(e["conceptValue"])
        assert [v["CodeValue"] for v in evaluations["qc-status"]] == [organ["status"]]
        assert evaluations.get("qc-reason", []) == organ["reasons"] and organ["reasons"]
        number = next((n for n, name in run.names.items() if name == organ["name"]), None)
        if number is None:        # not found: no segment, no volume; its QC says so
            assert "ReferencedSegment" not in group and group["measurementItems"] == []
            assert organ["status"] == "fail" and organ["reasons"] == ["not found in the scan"]
            continue
        assert group["ReferencedSegment"] == number and group["segmentationSOPInstanceUID"] == seg_uid
        (item,) = group["measurementItems"]
        assert item["quantity"]["CodeMeaning"] == "Volume" and item["units"]["CodeValue"] == "ml"
        assert float(item["value"]) == pytest.approx(organ["volume_ml"], rel=1e-6)
        assert float(item["value"]) == pytest.approx(np.count_nonzero(run.segments == number) * voxel_ml, rel=1e-3)


def test_dcmqi_and_slicers_plugin_read_the_maps(run, tmp_path):
    for tag in TAGS:
        out = tmp_path / tag.replace(" ", "_")
        out.mkdir()
        _run([_tool("paramap2itkimage"), "--inputDICOM", run.map_files[tag], "--outputDirectory", out])
        meta = json.loads((out / "meta.json").read_text())
        # What Slicer's DICOMParametricMapPlugin sets on the volume node: the quantity and its units.
        assert meta["QuantityValueCode"] == {"CodeValue": "130402", "CodingSchemeDesignator": "DCM",
                                             "CodeMeaning": "Class activation"}
        assert meta["MeasurementUnitsCode"]["CodeValue"] == "1"
        assert meta["RealWorldValueSlope"] == "1" and meta["DerivedPixelContrast"] == "NONE"
        assert meta["AnatomicRegionSequence"]["CodeMeaning"] == ("Kidney" if tag == "right kidney" else "Liver")
        assert meta["FrameLaterality"] == ("R" if tag == "right kidney" else "U")
        values = _on_grid(read_volume(out / "pmap.nrrd"), run.ct)
        np.testing.assert_allclose(values, run.maps[tag], atol=MAP_TOLERANCE, err_msg=tag)


def test_ohif_readers_dcmjs_and_cornerstone_adapters(run, tmp_path):
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: OHIF's readers (dcmjs, @cornerstonejs/adapters) "
                    "run under Node")
    assert (NODE / "node_modules" / "@cornerstonejs" / "adapters").is_dir(), \
        "Testing/node/node_modules missing: run `make node-readers` (npm ci from Testing/node/package-lock.json)"
    _run(["node", NODE / "read_dicom.mjs", run.series, tmp_path, run.seg, *run.map_files.values()])
    read = json.loads((tmp_path / "read.json").read_text())
    # The volume's slices as Cornerstone3D sorted them -> our slice index k.
    uids = [h.SOPInstanceUID for h in run.ct.source.headers]
    k = [uids.index(u) for u in read["sop_instance_uids"]]
    cols, rows, slices = run.ct.array.shape

    def volume(name, dtype):
        frames = np.fromfile(tmp_path / name, dtype=dtype).reshape(slices, rows, cols)
        out = np.empty_like(frames)
        out[k] = frames
        return out.transpose(2, 1, 0)

    assert {s["number"]: s["label"] for s in read["segments"]} == run.names
    np.testing.assert_array_equal(volume("seg.u16", "<u2"), run.segments)
    for tag, path in run.map_files.items():
        np.testing.assert_allclose(volume(read["maps"][path.stem], "<f4"), run.maps[tag], atol=MAP_TOLERANCE,
                                   err_msg=tag)


def test_highdicom_reads_seg_and_maps(run):
    import highdicom as hd

    uids = [h.SOPInstanceUID for h in run.ct.source.headers]
    seg = hd.seg.segread(run.seg)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               skip_overlap_checks=True)
    np.testing.assert_array_equal(pixels.transpose(2, 1, 0), run.segments)
    for tag, path in run.map_files.items():
        pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(path))
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1, 0)
        # Frame n is slice n: by its source reference and its position.
        for n, frame in enumerate(pm.PerFrameFunctionalGroupsSequence):
            source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            assert source == uids[n]
            np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                       run.ct.source.headers[n].ImagePositionPatient)
        np.testing.assert_allclose(pm.pixel_array.transpose(2, 1, 0), run.maps[tag], atol=MAP_TOLERANCE)


def test_map_and_seg_attributes_the_readers_need(run):
    seg = pydicom.dcmread(run.seg)
    assert "ContentCreatorName" in seg
    for tag, path in run.map_files.items():
        pm = pydicom.dcmread(path)
        assert pm.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
        assert "FloatPixelData" in pm and pm.BitsAllocated == 32 and "PixelData" not in pm
        assert list(pm.ImageType) == ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
        assert "ContentCreatorName" in pm and "Laterality" not in pm
        anatomy = pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
        region = anatomy.AnatomicRegionSequence[0]
        if tag == "right kidney":
            assert region.AnatomicRegionModifierSequence[0].CodeMeaning == "Right" and anatomy.FrameLaterality == "R"
        else:
            assert region.CodeMeaning == "Liver" and anatomy.FrameLaterality == "U"


def test_seg_and_maps_pass_dciodvfy(run, tmp_path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (Debian/Ubuntu: apt-get install dicom3tools)")
    # dicom3tools does not inflate a deflated file: the maps are checked as the same dataset, uncompressed.
    inflated = tmp_path / "map.dcm"
    ds = pydicom.dcmread(run.map_files["right kidney"])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(inflated, enforce_file_format=True)
    for path, iod in ((run.seg, "Segmentation"), (inflated, "ParametricMap"), (run.report, "Comprehensive3DSR")):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [] and iod in out.stdout + out.stderr, errors
