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
    """In-process (the script's main) on a real scene."""
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
        # as `mosmos segment`: a label map file here, the SEG and SR in the study (the same instances: a rerun
        # repeats their UIDs, mosmos.inference.run.stored_uid)
        assert batch.main(args[:-1] + ["--store", "--format", "nii.gz"]) == 0, capsys.readouterr().err
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{study}.dcm", f"{study}.nii.gz",
                                                                        f"{study}_sr.dcm"]
        for modality in ("SEG", "SR"):
            assert len(client.search_for_instances(study_instance_uid=study, search_filters={"Modality": modality})) == 1
    finally:
        stop(proc)


def test_batch_runs_the_request_here_and_writes_no_temporary_volume(tiny_model, tmp_path, scene, capsys):
    """DICOM series -> .seg.nrrd: the batch runs mosmos.segment in its own process (no child process) on the
    series it reads once, and keeps the label map in memory for the .seg.nrrd (no temporary NIfTI round trip):
    an audit hook sees every file Python opens for writing and every process started. The .seg.nrrd's segments
    lie where the run's label map has their labels."""
    import importlib.util

    from dicom_series import MR_SMALL, make_series

    from mosmos.inference.io import read_volume
    from mosmos.mrml.segmentation import export_segment_array
    from mosmos.mrml.volumes import volume_from_array

    spec = importlib.util.spec_from_file_location("MOSMOSSegmentBatch", SCRIPT)
    batch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(batch)
    series = tmp_path / "series"
    make_series(MR_SMALL, series)
    out, attention = tmp_path / "out" / "mr.seg.nrrd", tmp_path / "att"
    written, seen = [], {"watch": True, "opened": [], "started": []}

    def keep(result, target, name):   # the run's result, as write_segmentation_file gets it
        written.append(result)
        write(result, target, name)

    write, batch.write_segmentation_file = batch.write_segmentation_file, keep

    def audit(event, args):
        if not seen["watch"]:
            return
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and (
                any(c in str(args[1] or "") for c in "wax+") or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR)):
            seen["opened"].append(os.fsdecode(args[0]))
        elif event == "subprocess.Popen":   # (executable, args, cwd, env); ctypes asks ldconfig for libraries
            seen["started"].append(" ".join(map(os.fsdecode, args[1])))

    sys.addaudithook(audit)   # hooks stay for the process's life: "watch" turns this one off below
    try:
        code = batch.main(["--input", str(series), "--model", str(tiny_model), "--tags", "liver, spleen",
                           "--device", "cpu", "--output", str(out), "--attention", str(attention)])
    finally:
        seen["watch"] = False
    assert code == 0, capsys.readouterr().err
    assert not [argv for argv in seen["started"] if "mosmos" in argv or sys.executable in argv], seen["started"]
    volumes = [p for p in seen["opened"] if p.lower().endswith((".nii", ".nii.gz", ".nrrd", ".part"))]
    # the attention maps (staged beside themselves) and the .seg.nrrd's staging file: nothing anywhere else
    assert volumes and all(Path(p).parent in (attention / "series", out.parent) for p in volumes), volumes
    assert sorted(p.name for p in (attention / "series").iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]

    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(out))
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert storage.ReadData(seg_node)
    volume = read_volume(series)
    reference = volume_from_array(scene, volume.array.transpose(2, 1, 0), volume.affine, "reference")
    [result] = written
    found = 0
    for organ in result.organs:
        if seg_node.GetSegmentation().GetSegmentIdBySegmentName(organ["name"]):
            found += 1
            np.testing.assert_array_equal(export_segment_array(seg_node, organ["name"], reference),
                                          (result.labelmap == organ["label"]).transpose(2, 1, 0))
    assert found == sum(bool((result.labelmap == o["label"]).any()) for o in result.organs) > 0
    assert [p.name for p in out.parent.iterdir()] == ["mr.seg.nrrd"]   # the staged file renamed into place
