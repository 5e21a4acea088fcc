"""mosmos.mrml on real MRML (slicer-core), real data from TotalSegmentator's test files."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import slicer
import vtk

ROOT = Path(__file__).resolve().parents[1]

from mosmos.mrml import attention, models, pipeline, process, segmentation, tables, terminology, volumes  # noqa: E402
from helpers import real_data  # noqa: E402
from mosmos.errors import MosmosError  # noqa: E402
from mosmos.tags import color_for, normalize_tag  # noqa: E402

DATA = real_data("totalseg_example")


def real_organs():
    """The CT label map's abdominal organs under MOSMOS names: (label array (k,j,i), affine, organs)."""
    img = nib.load(DATA / "example_seg.nii.gz")
    names = json.loads((DATA / "class_map_subset.json").read_text())["total"]
    labels = np.asarray(img.dataobj).astype(np.uint8).transpose(2, 1, 0)
    present = set(np.unique(labels).tolist())
    organs = []
    for value, name in names.items():
        tag = normalize_tag(name)
        if tag and int(value) in present:
            organs.append({"name": tag, "label": int(value), "color": list(color_for(tag))})
    return labels, img.affine, organs


def test_volume_arrays_and_geometry_match_nibabel(scene, tmp_path):
    path = DATA / "example_mr_sm.nii.gz"
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine)[:2] == ("L", "P")  # an LPS-stored file: the interesting case
    node = volumes.read_volume(path, scene)
    array, ijkToRAS = volumes.array_from_volume(node)
    np.testing.assert_array_equal(array, np.asarray(img.dataobj).transpose(2, 1, 0))
    np.testing.assert_allclose(ijkToRAS, img.affine, atol=1e-4)
    array[0, 0, 0] += 1  # an owned copy, not a view on the node's memory
    assert slicer.util.arrayFromVolume(node)[0, 0, 0] == array[0, 0, 0] - 1

    copy = volumes.volume_from_array(scene, array, ijkToRAS, "copy")
    back, backRAS = volumes.array_from_volume(copy)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(backRAS, ijkToRAS)

    volumes.write_volume(node, tmp_path / "mr.nii")
    written = nib.load(tmp_path / "mr.nii")
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(img.dataobj))
    np.testing.assert_allclose(written.affine, img.affine, atol=1e-4)

    import nrrd

    volumes.write_volume(node, tmp_path / "mr.nrrd")
    data, header = nrrd.read(str(tmp_path / "mr.nrrd"))
    assert header["space"] == "left-posterior-superior"
    lpsToRas = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(lpsToRas @ np.asarray(header["space directions"]).T, img.affine[:3, :3], atol=1e-4)
    np.testing.assert_allclose(lpsToRas @ np.asarray(header["space origin"]), img.affine[:3, 3], atol=1e-4)
    np.testing.assert_array_equal(data, np.asarray(img.dataobj))
    again, againRAS = volumes.array_from_volume(volumes.read_volume(tmp_path / "mr.nrrd", scene))
    np.testing.assert_array_equal(again, array - (np.arange(array.size).reshape(array.shape) == 0))
    np.testing.assert_allclose(againRAS, ijkToRAS, atol=1e-4)


def test_read_volume_errors_name_the_file(scene, tmp_path):
    with pytest.raises(MosmosError, match="missing.nii"):
        volumes.read_volume(tmp_path / "missing.nii", scene)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(MosmosError, match="bad.nii.gz"):
        volumes.read_volume(bad, scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_segmentation_node_from_real_label_map(scene):
    labels, affine, organs = real_organs()
    assert {o["name"] for o in organs} >= {"liver", "spleen", "right kidney", "left adrenal gland", "aorta"}
    reference = volumes.read_volume(DATA / "example_ct_sm.nii.gz", scene, "CT")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    if not sh.GetItemByDataNode(reference):
        sh.CreateItem(study, reference)
    sh.SetItemParent(sh.GetItemByDataNode(reference), study)

    segNode = segmentation.build_segmentation_node(scene, labels, affine, organs, "CT segmentation", reference)

    assert segmentation.segment_names(segNode) == [o["name"] for o in organs]
    assert sh.GetItemParent(sh.GetItemByDataNode(segNode)) == study
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # temporary nodes are gone
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == 0
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for organ in organs:
        segment = segNode.GetSegmentation().GetSegment(segmentation.segment_id(segNode, organ["name"]))
        np.testing.assert_allclose(segment.GetColor(), np.array(organ["color"]) / 255.0, atol=1e-6)
        entry = terminology.terminology_entry(organ["name"])
        tag = vtk.mutable("")
        assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag) and tag.get() == entry
        parsed = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(entry, parsed)
        assert logic.SerializeTerminologyEntry(parsed) == entry  # Slicer's own format, round trip
        assert parsed.GetCategoryObject().GetCodeValue() == "123037004"
        exported = segmentation.export_segment_array(segNode, organ["name"], reference)
        np.testing.assert_array_equal(exported, (labels == organ["label"]).astype(np.uint8), err_msg=organ["name"])

    liver = slicer.vtkSlicerTerminologyEntry()
    logic.DeserializeTerminologyEntry(terminology.terminology_entry("liver"), liver)
    assert (liver.GetTypeObject().GetCodingSchemeDesignator(), liver.GetTypeObject().GetCodeValue()) == ("SCT", "10200004")
    left = slicer.vtkSlicerTerminologyEntry()
    logic.DeserializeTerminologyEntry(terminology.terminology_entry("left kidney"), left)
    assert left.GetTypeModifierObject().GetCodeMeaning() == "Left"

    # Re-running into the same node replaces its segments.
    few = [o for o in organs if o["name"] in ("liver", "spleen")]
    same = segmentation.build_segmentation_node(scene, labels, affine, few, "CT segmentation", reference, segNode)
    assert same is segNode and sorted(segmentation.segment_names(segNode)) == ["liver", "spleen"]


def test_segmentation_skips_organs_found_nowhere_and_rejects_duplicates(scene):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    organs = [{"name": "liver", "label": 1, "color": [1, 2, 3]}, {"name": "spleen", "label": 2, "color": [4, 5, 6]}]
    segNode = segmentation.build_segmentation_node(scene, labels, np.eye(4), organs)
    assert segmentation.segment_names(segNode) == ["spleen"]
    with pytest.raises(MosmosError, match="duplicate"):
        segmentation.build_segmentation_node(scene, labels, np.eye(4), organs + [dict(organs[0], name="x")])


def _normals_agree(surface, reference, flip=np.eye(3)) -> float:
    """The share of ``surface``'s points whose normal points the way that of the nearest point of ``reference``
    (mapped by ``flip``) does."""
    from scipy.spatial import cKDTree
    from vtkmodules.util.numpy_support import vtk_to_numpy

    points, normals = vtk_to_numpy(surface.GetPoints().GetData()), vtk_to_numpy(surface.GetPointData().GetNormals())
    refPoints = vtk_to_numpy(reference.GetPoints().GetData()) @ flip.T
    refNormals = vtk_to_numpy(reference.GetPointData().GetNormals()) @ flip.T
    _, nearest = cKDTree(refPoints).query(points)
    return float(np.mean(np.sum(normals * refNormals[nearest], axis=1) > 0))


def test_closed_surfaces_are_slicers_and_the_node_shows_them(scene):
    labels, affine, organs = real_organs()
    few = [o for o in organs if o["name"] in ("liver", "spleen", "left kidney")]
    wanted = {o["name"]: o["label"] for o in few} | {"pancreas": 250}    # a label found nowhere gets no surface
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)     # registers Slicer's conversion rules, as the Slicer application does
    representation = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    ours = segmentation.build_segmentation_node(scene, labels, affine, few, "ours")
    theirs = segmentation.build_segmentation_node(scene, labels, affine, few, "Slicer's")
    assert theirs.CreateClosedSurfaceRepresentation()

    surfaces = segmentation.closed_surfaces(labels, affine, wanted)
    assert sorted(surfaces) == ["left kidney", "liver", "spleen"]
    for name, surface in surfaces.items():
        slicers = theirs.GetSegmentation().GetSegment(segmentation.segment_id(theirs, name)).GetRepresentation(
            representation)
        assert (surface.GetNumberOfPoints(), surface.GetNumberOfPolys()) == (
            slicers.GetNumberOfPoints(), slicers.GetNumberOfPolys()), name
        for mesh in (surface, slicers):
            mass = vtk.vtkMassProperties()
            mass.SetInputData(mesh)
            mass.Update()
            measured = (mass.GetVolume(), mass.GetSurfaceArea())
            if mesh is surface:
                ourMeasures = measured
        # The same mesh, smoothed a little differently where the organ meets the end of the scan (all three do).
        assert ourMeasures[0] == pytest.approx(measured[0], rel=0.01), name
        assert ourMeasures[1] == pytest.approx(measured[1], rel=0.05), name
        voxelMl = abs(np.linalg.det(affine[:3, :3])) / 1000
        organ = next(o for o in few if o["name"] == name)
        assert ourMeasures[0] / 1000 == pytest.approx(np.count_nonzero(labels == organ["label"]) * voxelMl, rel=0.15)
        # Normals face the way Slicer's do, out of the organ (the 3D view's lighting) ...
        assert _normals_agree(surface, slicers) > 0.95, name
    # ... on an LPS grid too, where the mapping to RAS turns the mesh inside out unless its triangles are turned.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    flipped = segmentation.closed_surfaces(labels, lps @ affine, {"liver": wanted["liver"]})["liver"]
    assert _normals_agree(flipped, surfaces["liver"], lps[:3, :3]) > 0.95

    segmentation.set_closed_surfaces(ours, surfaces)
    assert ours.GetSegmentation().ContainsRepresentation(representation)
    ours.CreateDefaultDisplayNodes()
    assert ours.GetDisplayNode().GetDisplayRepresentationName3D() == representation
    liver = ours.GetSegmentation().GetSegment(segmentation.segment_id(ours, "liver"))
    assert ours.CreateClosedSurfaceRepresentation()       # already there: Slicer keeps it rather than converting
    assert liver.GetRepresentation(representation) is surfaces["liver"]


def test_attention_volume_and_colour_map(scene):
    rng = np.random.default_rng(0)
    att = rng.uniform(-0.2, 1.2, (6, 7, 8)).astype(np.float32)
    ijkToRAS = np.diag([2.0, 2.0, 3.0, 1.0])
    node = attention.attention_volume_node(scene, att, ijkToRAS, "liver")
    array, ras = volumes.array_from_volume(node)
    np.testing.assert_array_equal(array, np.clip(att, 0, 1))
    np.testing.assert_array_equal(ras, ijkToRAS)
    assert node.GetAttribute("MOSMOS.AttentionTag") == "liver"
    display = node.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert not display.GetAutoWindowLevel() and display.GetApplyThreshold()
    color = display.GetColorNode()
    # slicer-core scenes have no colour files: our Inferno table stands in, made once per scene.
    assert color.GetName() == attention.FALLBACK_COLOR_NODE_NAME and color.GetNumberOfColors() == 256
    dark, bright = [0.0] * 4, [0.0] * 4
    color.GetColor(0, dark)
    color.GetColor(255, bright)
    assert sum(dark[:3]) < 0.1 and sum(bright[:3]) > 2.5
    legend = node.GetNthDisplayNode(1)  # the colour legend says what the colours mean, over the same 0..1
    assert legend.IsA("vtkMRMLColorLegendDisplayNode") and legend.GetPrimaryDisplayNode() is display
    assert legend.GetTitleText() == "P(liver wins)"
    other = attention.attention_volume_node(scene, att, ijkToRAS, "duodenum", labelled=False)
    assert other.GetDisplayNode().GetColorNodeID() == color.GetID()
    assert other.GetNthDisplayNode(1).GetTitleText() == "P(duodenum vs background)"  # an open-set tag


def test_terminology_context_holds_every_organ_and_slicer_resolves_it():
    """Slicer's own terminologies logic loads the MOSMOS context, and every organ's segment entry resolves to its
    organ there (what the terminology selector shows), with the segment's colour as recommended colour."""
    from mosmos.tags import PRETRAIN_TAGS

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    entry = terminology.terminology_entry("liver")
    assert terminology.resolved_label(logic, entry) is None  # not loaded yet: nothing resolves
    assert terminology.load_context(logic) == terminology.context_name() == entry.split("~")[0]
    assert terminology.load_context(logic) == terminology.context_name()  # once only
    assert len(PRETRAIN_TAGS) == 20 and set(PRETRAIN_TAGS) <= set(terminology.known_tags())
    for tag in terminology.known_tags():
        entry = terminology.terminology_entry(tag)
        assert terminology.resolved_label(logic, entry) == tag
        parsed = slicer.vtkSlicerTerminologyEntry()
        logic.DeserializeTerminologyEntry(entry, parsed)
        logic.UpdateEntryFromLoadedTerminologies(parsed, [terminology.context_name()], [])
        coded = parsed.GetTypeModifierObject() if parsed.GetTypeModifierObject().GetCodeValue() else \
            parsed.GetTypeObject()
        assert coded.GetRecommendedDisplayRGBValue() == color_for(tag), tag
    assert terminology.terminology_entry("duodenum") is None

    broken = slicer.vtkSlicerTerminologiesModuleLogic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(terminology, "CONTEXT_FILE", str(DATA / "class_map_subset.json"))
        with pytest.raises(MosmosError, match="class_map_subset.json: Slicer could not load"):
            terminology.load_context(broken)


def test_volume_table_is_voxel_count_times_voxel_volume(scene):
    labels, affine, organs = real_organs()
    ml = tables.organ_volumes_ml(labels, affine, organs)
    voxel = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    assert voxel == pytest.approx(0.027)
    for organ in organs:
        assert ml[organ["name"]] == pytest.approx(np.count_nonzero(labels == organ["label"]) * voxel)
    assert ml["liver"] == pytest.approx(38634 * 0.027)  # LABELS.tsv
    # QC as `mosmos segment --volumes` lists it: a flagged organ with two reasons, an ok one, one never checked.
    organs[0].update(status="check", reasons=["in pieces: the largest holds 48 % of it", "cut by the scan's edge"])
    organs[1].update(status="ok", reasons=[])
    rows = tables.volume_rows(organs, ml)
    table = tables.volume_table_node(scene, rows, "volumes")
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(tables.COLUMNS)
    assert table.GetNumberOfRows() == len(organs)
    for i, organ in enumerate(organs):
        assert table.GetCellText(i, 0) == organ["name"]
        assert int(table.GetCellText(i, 1)) == organ["label"]
        assert table.GetTable().GetValue(i, 2).ToDouble() == pytest.approx(ml[organ["name"]], abs=1e-3)
    assert [table.GetCellText(i, 3) for i in range(3)] == ["check", "ok", ""]
    assert [table.GetCellText(i, 4) for i in range(3)] == [
        "in pieces: the largest holds 48 % of it; cut by the scan's edge", "", ""]
    assert "ok, check" in table.GetColumnDescription("status") and set(tables.STATUS_COLORS) == {"ok", "check", "fail"}
    same = tables.volume_table_node(scene, rows[:1], table_node=table)
    assert same is table and table.GetNumberOfRows() == 1


def _model_file(path, kind="mosmos-segmentation", labels=None):
    import torch
    from mosmos.files.modelfile import save_model

    header = {"kind": kind, "modality": "CT", "config": {},
              "labels": labels or {"0": "background", "1": "spleen", "2": "liver"}}
    save_model(path, {"w": torch.zeros(3)}, header)
    return path


def test_models_folder_listing_and_adding(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv(models.ENV_MODELS_DIR, str(folder))
    assert models.default_models_dir() == folder and models.list_models() == []
    source = _model_file(tmp_path / "abdomen.mosmos")
    info = models.add_model_file(source)
    assert info.path == folder / "abdomen.mosmos" and info.path.read_bytes() == source.read_bytes()
    assert info.organs == ("spleen", "liver") and info.modality == "CT"
    (folder / "notes.txt").write_text("not a model")
    _model_file(folder / "pretrained.mosmos", kind="mosmos-pretrain")
    assert [m.name for m in models.list_models()] == ["abdomen.mosmos"]
    assert [m.name for m in models.list_models(kind=None)] == ["abdomen.mosmos", "pretrained.mosmos"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]

    text = tmp_path / "scan.nii.gz"
    text.write_bytes(b"\x00" * 64)
    with pytest.raises(MosmosError, match="scan.nii.gz: not a MOSMOS model"):
        models.add_model_file(text)
    with pytest.raises(MosmosError, match="pretrained"):
        models.add_model_file(folder / "pretrained.mosmos", tmp_path / "elsewhere")
    damaged = tmp_path / "damaged.mosmos"
    damaged.write_bytes(source.read_bytes()[:-4] + b"\xff\xff\xff\xff")
    with pytest.raises(MosmosError, match="damaged.mosmos"):
        models.add_model_file(damaged)
    assert sorted(p.name for p in folder.iterdir()) == ["abdomen.mosmos", "notes.txt", "pretrained.mosmos"]

    assert pipeline.resolve_model("abdomen") == folder / "abdomen.mosmos"
    assert pipeline.resolve_model(None) == folder / "abdomen.mosmos"
    with pytest.raises(MosmosError, match="other: model file not found"):
        pipeline.resolve_model("other")


def test_segment_command_and_environment():
    from mosmos.commands import segment
    from mosmos.inference.request import SegmentRequest

    request = SegmentRequest(model="m.mosmos", input="in.nii", output="out.nii.gz", tags=["liver", "left kidney"],
                             attention="att", volumes="v.json", device=process.normalize_device("GPU"),
                             json_progress=True)
    argv = process.segment_command(request, python="py")
    assert argv == ["py", "-m", "mosmos", "segment", "in.nii", "--model", "m.mosmos", "--output", "out.nii.gz",
                    "--tags", "liver, left kidney", "--attention", "att", "--volumes", "v.json", "--device", "cuda",
                    "--json-progress"]
    parser = argparse.ArgumentParser()
    segment.add_arguments(parser)
    assert SegmentRequest.from_args(parser.parse_args(argv[4:])).to_argv() == argv[4:]   # the child's request
    fast = SegmentRequest(model="m.mosmos", input="in.nii", output="out.nii.gz", fast=True)
    assert process.segment_command(fast, python="py")[-1] == "--fast"
    env = process.child_environment("cpu")
    assert env["CUDA_VISIBLE_DEVICES"] == "-1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert "CUDA_VISIBLE_DEVICES" not in process.child_environment("auto") or os.environ.get("CUDA_VISIBLE_DEVICES")
    with pytest.raises(MosmosError, match="tpu"):
        process.normalize_device("tpu")
    assert process.parse_line('{"event": "progress", "done": 1, "total": 4}\n') == {"event": "progress", "done": 1, "total": 4}
    assert process.parse_line("plain text\n") == {"event": "log", "line": "plain text"}
    assert process.parse_line("{broken\n")["event"] == "log"


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_process_progress_events_and_errors():
    child = process.BackgroundProcess(_child("""
        import json, sys, time
        for i in range(1, 4):
            print(json.dumps({"event": "progress", "done": i, "total": 3}), flush=True)
            time.sleep(0.05)
        print("a log line", flush=True)
        print(json.dumps({"event": "done"}), flush=True)
    """)).start()
    events = []
    deadline = time.monotonic() + 20
    while not events or events[-1]["event"] != "exit":
        assert time.monotonic() < deadline
        events += child.poll()
        time.sleep(0.02)
    assert [(e["done"], e["total"]) for e in events if e["event"] == "progress"] == [(1, 3), (2, 3), (3, 3)]
    assert {"event": "log", "line": "a log line"} in events and {"event": "done"} in events
    assert events[-1] == {"event": "exit", "returncode": 0} and not child.running

    seen = []
    failing = process.BackgroundProcess(_child("""
        import json, sys
        print(json.dumps({"event": "progress", "done": 1, "total": 2}), flush=True)
        print("warning: something", file=sys.stderr)
        print("mosmos segment: error: scan.nii: not a 3D volume", file=sys.stderr)
        sys.exit(1)
    """))
    with pytest.raises(MosmosError, match=r"^scan.nii: not a 3D volume$"):
        failing.wait(lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2)] and failing.returncode == 1


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


TREE = """
    import json, subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(json.dumps({"event": "started", "grandchild": grandchild.pid}), flush=True)
    for i in range(1000):
        print(json.dumps({"event": "progress", "done": i, "total": 1000}), flush=True)
        time.sleep(0.1)
"""


def test_cancel_kills_the_whole_process_tree():
    child = process.BackgroundProcess(_child(TREE)).start()
    event = child.next_event(timeout=20)
    assert event["event"] == "started"
    grandchild = event["grandchild"]
    assert not _gone(grandchild)
    child.cancel()
    assert _gone(child.pid) and _gone(grandchild)
    with pytest.raises(process.Cancelled):
        child.check()


def test_gui_cancel_returns_while_the_process_is_still_stopping():
    """The Cancel button must not wait for a process that takes its time to stop (here: one that ignores
    SIGTERM and is killed after the timeout): cancel(wait=False) returns with the process still alive, and the
    exit event follows."""
    child = process.BackgroundProcess(_child("""
        import json, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(json.dumps({"event": "started"}), flush=True)
        time.sleep(120)
    """)).start()
    assert child.next_event(timeout=20)["event"] == "started"
    child.cancel(timeout=3.0, wait=False)
    assert child.running and not _gone(child.pid)
    assert child.next_event(timeout=30)["event"] == "exit" and _gone(child.pid)
    with pytest.raises(process.Cancelled):
        child.check()


def test_blocking_wait_cancels_when_progress_says_false():
    child = process.BackgroundProcess(_child(TREE))
    with pytest.raises(process.Cancelled):
        child.wait(lambda done, total: done < 2)
    assert _gone(child.pid)


def test_job_reads_core_outputs_into_nodes(scene, tmp_path):
    """The Slicer half of a run: the outputs `mosmos segment` writes (on the input grid) become nodes."""
    ct = volumes.read_volume(DATA / "example_ct_sm.nii.gz", scene, "CT")
    labels, affine, organs = real_organs()
    organs = [o for o in organs if o["name"] in ("liver", "spleen", "left kidney")]
    model = _model_file(tmp_path / "m.mosmos")
    job = pipeline.SegmentationJob(ct, "liver, spleen, left kidney", model, "cpu", attention=True)
    assert job.tags == ["liver", "spleen", "left kidney"]
    volumes.write_volume(ct, job.input_path)  # what start() hands the core
    job.process = process.BackgroundProcess([sys.executable, "-c", "pass"]).start()
    job.process.wait()

    kept = np.where(np.isin(labels, [o["label"] for o in organs]), labels, 0)
    nib.save(nib.Nifti1Image(kept.transpose(2, 1, 0).astype(np.uint8), affine), job.output_path)
    job.attention_dir.mkdir()
    att = (labels == 5).astype(np.float32) * 0.9
    nib.save(nib.Nifti1Image(att.transpose(2, 1, 0), affine), job.attention_dir / "liver.nii.gz")
    for organ, status in zip(organs, ("fail", "ok", "ok")):
        organ.update(status=status, reasons=["lies on the patient's left"] if status == "fail" else [])
    job.volumes_path.write_text(json.dumps({"organs": organs, "attention": {"liver": "liver.nii.gz"},
                                           "notices": ["test notice"]}))
    out = job.finish()
    job.cleanup()
    assert not job.work_dir.exists()

    assert sorted(segmentation.segment_names(out.segmentation_node)) == ["left kidney", "liver", "spleen"]
    np.testing.assert_array_equal(segmentation.export_segment_array(out.segmentation_node, "spleen", ct), labels == 1)
    assert out.notices == ["test notice"] and list(out.attention_nodes) == ["liver"]
    np.testing.assert_allclose(volumes.array_from_volume(out.attention_nodes["liver"])[0], att)
    assert out.table_node.GetCellText(0, 0) == organs[0]["name"]
    assert out.table_node.GetTable().GetValue(1, 2).ToDouble() == pytest.approx(np.count_nonzero(labels == organs[1]["label"]) * 0.027, abs=1e-3)
    assert [out.table_node.GetCellText(i, 3) for i in range(3)] == ["fail", "ok", "ok"]
    assert out.table_node.GetCellText(0, 4) == "lies on the patient's left"


def test_job_rejects_output_on_another_grid(scene, tmp_path):
    vol = volumes.volume_from_array(scene, np.zeros((4, 5, 6), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]), "v")
    job = pipeline.SegmentationJob(vol, ["liver"], _model_file(tmp_path / "m.mosmos"))
    job.process = process.BackgroundProcess([sys.executable, "-c", "pass"]).start()
    job.process.wait()
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 3), np.uint8), np.eye(4)), job.output_path)
    job.volumes_path.write_text(json.dumps({"organs": [{"name": "liver", "label": 1, "color": [1, 2, 3]}]}))
    with pytest.raises(MosmosError, match="differs from the input volume grid"):
        job.finish()
    job.cleanup()
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_job_runs_the_real_core_cli_on_an_lps_volume(scene, tmp_path, monkeypatch):
    """GUI path end to end: NIfTI out, `mosmos segment` in a child process polled like the QTimer does,
    outputs back as nodes, voxel for voxel equal to what the core wrote. The network is the inference
    tests' stand-in (Testing/inference_stub.py), registered in the child through sitecustomize."""
    sys.path.insert(0, str(ROOT / "Testing"))
    import inference_stub

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'Testing')!r})\n"
                                           "import inference_stub\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    model = inference_stub.write_stub_model(tmp_path / "stub.mosmos", spacing=(3.0, 3.0, 3.0), modality="MR")
    mr = volumes.read_volume(DATA / "example_mr_sm.nii.gz", scene, "MR")

    job = pipeline.SegmentationJob(mr, ["liver", "spleen"], model, "cpu", attention=True)
    child = job.start()
    events, deadline = [], time.monotonic() + 120
    while not events or events[-1]["event"] != "exit":
        assert time.monotonic() < deadline, events[-5:]
        events += child.poll()
        time.sleep(0.05)
    assert events[-1]["returncode"] == 0, child.error_message()
    assert any(e["event"] == "progress" for e in events)
    written = np.asarray(nib.load(job.output_path).dataobj).transpose(2, 1, 0)
    out = job.finish()
    job.cleanup()

    ijkToRAS = volumes.ijk_to_ras(mr)
    for organ in out.organs:
        expected = (written == organ["label"]).astype(np.uint8)
        if expected.any():
            np.testing.assert_array_equal(segmentation.export_segment_array(out.segmentation_node, organ["name"], mr),
                                          expected)
    np.testing.assert_array_equal(out.labelmap, written)
    assert sorted(out.attention_nodes) == ["liver", "spleen"]
    for node in out.attention_nodes.values():
        values, ras = volumes.array_from_volume(node)
        assert values.shape == written.shape and 0.0 <= values.min() and values.max() <= 1.0
        np.testing.assert_allclose(ras, ijkToRAS)
    voxel = tables.voxel_volume_ml(ijkToRAS)
    for row, organ in enumerate(out.organs):
        assert out.table_node.GetTable().GetValue(row, 2).ToDouble() == pytest.approx(
            np.count_nonzero(written == organ["label"]) * voxel, abs=1e-3)
        # The core's QC of each organ, as its volumes file has it (the stub's organs are implausible: flagged).
        assert out.table_node.GetCellText(row, 3) == organ["status"] in ("check", "fail")
        assert out.table_node.GetCellText(row, 4) == "; ".join(organ["reasons"]) != ""
