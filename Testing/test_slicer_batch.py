"""Headless batch script under plain Python (slicer-core) on a real CT, with a tiny model made on the fly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import slicer

from helpers import real_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "Resources" / "Scripts" / "MOSMOSSegmentBatch.py"
CT = real_data("totalseg_example/example_ct_sm.nii.gz")


def run_batch(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from mosmos.experiments.recipes import make_tiny_segmentation_model

    path = tmp_path_factory.mktemp("models") / "tiny.mosmos"
    make_tiny_segmentation_model(path)
    return path


def test_batch_segments_a_real_ct_to_seg_nrrd_and_nifti(tiny_model, tmp_path):
    out = tmp_path / "ct.seg.nrrd"
    result = run_batch("--input", CT, "--model", tiny_model, "--tags", "liver, spleen", "--output", out,
                       "--device", "cpu")
    assert result.returncode == 0, result.stderr
    scene = slicer.vtkMRMLScene()
    segNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(out))
    assert storage.ReadData(segNode)
    seg = segNode.GetSegmentation()
    names = {seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())}
    assert names <= {"liver", "spleen"}

    folder = tmp_path / "nifti"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.nii.gz").write_bytes(CT.read_bytes())
    (inputs / "notes.txt").write_text("skipped")
    result = run_batch("--input", inputs, "--model", tiny_model, "--tags", "liver", "--output", folder,
                       "--format", "nii.gz", "--device", "cpu", "--attention", tmp_path / "att")
    assert result.returncode == 0, result.stderr
    labels = nib.load(folder / "a.nii.gz")
    ct = nib.load(CT)
    assert labels.shape == ct.shape
    np.testing.assert_allclose(labels.affine, ct.affine, atol=1e-4)
    liver = nib.load(tmp_path / "att" / "a" / "liver.nii.gz")  # P(liver wins), as the Slicer overlay shows it
    values = np.asarray(liver.dataobj)
    assert liver.shape == ct.shape and 0.0 <= values.min() and values.max() <= 1.0 and values.max() > values.min()
    np.testing.assert_allclose(liver.affine, ct.affine, atol=1e-4)
    assert set(np.unique(np.asarray(labels.dataobj)).tolist()) <= {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}


def test_batch_fails_with_one_line(tmp_path):
    notModel = tmp_path / "model.mosmos"
    notModel.write_text("not a model")
    result = run_batch("--input", CT, "--model", notModel, "--output", tmp_path / "x.seg.nrrd", timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("MOSMOSSegmentBatch: error: ")
    assert not (tmp_path / "x.seg.nrrd").exists()

    result = run_batch("--input", tmp_path / "missing.nii.gz", "--output", tmp_path / "y.seg.nrrd", timeout=120)
    assert result.returncode == 1 and "missing.nii.gz" in result.stderr


def test_batch_writes_a_dicom_seg_of_a_dicom_folder_never_into_it(tiny_model, tmp_path, scene, capsys):
    """In-process (the script's main) on a real scene: only the segmentation itself runs in a child process."""
    import importlib.util

    import highdicom as hd
    from dicom_series import MR_SMALL, make_series

    from mosmos.inference.io import read_volume

    spec = importlib.util.spec_from_file_location("MOSMOSSegmentBatch", SCRIPT)
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    series = tmp_path / "series"
    make_series(MR_SMALL, series)   # 64 x 64 x 3: one sliding window, so the run takes seconds
    args = ["--input", str(series), "--model", str(tiny_model), "--tags", "liver, spleen", "--device", "cpu",
            "--output"]
    assert batch.main(args + [str(tmp_path / "out")]) == 0, capsys.readouterr().err
    seg = hd.seg.segread(tmp_path / "out" / "series.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == read_volume(series).source.series_uid
    assert {s.SegmentLabel for s in seg.SegmentSequence} <= {"liver", "spleen"}
    # Its SR beside it: one measurement group per organ asked for, each with the core's QC status.
    report = hd.sr.srread(tmp_path / "out" / "series_sr.dcm")
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert groups and {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {seg.SOPInstanceUID}
    statuses = [g.get_qualitative_evaluations()[0].value.value for g in groups]
    assert set(statuses) <= {"ok", "check", "fail"}

    capsys.readouterr()
    assert batch.main(args + [str(series / "seg.dcm")]) == 1
    assert "inside the input DICOM folder" in capsys.readouterr().err
    assert sorted(p.name for p in series.iterdir()) == ["IM0000", "IM0001", "IM0002"]


def test_batch_fetches_a_study_from_dicomweb_and_stores_the_seg(tiny_model, tmp_path, scene, capsys, monkeypatch):
    """--dicomweb/--study/--store against a real Orthanc (orthanc_server.py), in-process like the test above."""
    import importlib.util

    import pydicom
    from dicom_series import MR_SMALL, make_series
    from orthanc_server import start_orthanc, stop

    from mosmos.inference import dicomweb

    spec = importlib.util.spec_from_file_location("MOSMOSSegmentBatch", SCRIPT)
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    files = make_series(MR_SMALL, tmp_path / "series")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    (tmp_path / "orthanc").mkdir()
    server, proc = start_orthanc(tmp_path / "orthanc")
    try:
        server.upload(files)
        monkeypatch.setenv(dicomweb.USER_ENV, server.user)
        monkeypatch.setenv(dicomweb.PASSWORD_ENV, server.password)
        args = ["--dicomweb", server.dicomweb, "--study", study, "--model", str(tiny_model), "--tags", "liver, spleen",
                "--device", "cpu", "--output", str(tmp_path / "out"), "--store"]
        assert batch.main(args) == 0, capsys.readouterr().err
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{study}.dcm", f"{study}_sr.dcm"]
        client = dicomweb.connect(server.dicomweb)
        for modality in ("SEG", "SR"):
            assert len(client.search_for_instances(study_instance_uid=study, search_filters={"Modality": modality})) == 1
        assert batch.main(args[:-1] + ["--store", "--format", "nii.gz"]) == 1
        assert "--store sends a DICOM SEG" in capsys.readouterr().err
    finally:
        stop(proc)
