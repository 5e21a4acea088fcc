"""A segmentation node with named, coloured, standard-coded segments from a label map."""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from mosmos.errors import MosmosError

from .terminology import terminology_entry
from .volumes import array_from_volume, volume_from_array


def build_segmentation_node(scene, labelmap: np.ndarray, ijkToRAS: np.ndarray, organs: list[dict],
                            name: str = "MOSMOS segmentation", referenceVolumeNode=None, segmentationNode=None):
    """Segments for ``organs`` ({"name", "label", "color" 0..255}) from ``labelmap`` (k, j, i) on the grid
    ``ijkToRAS``. Label values not listed in ``organs`` are ignored. An existing ``segmentationNode`` is
    emptied and refilled, so a user's choice of output node is kept. Returns the segmentation node."""
    organs = [o for o in organs if int(o["label"]) > 0]
    labels = [int(o["label"]) for o in organs]
    if len(set(labels)) != len(labels):
        raise MosmosError(f"{name}: duplicate label values in {labels}")
    if len({o["name"] for o in organs}) != len(organs):
        raise MosmosError(f"{name}: duplicate organ names")

    kept = np.where(np.isin(labelmap, labels), labelmap, 0)
    dtype = np.uint8 if max(labels, default=0) < 256 else np.uint16
    labelNode = volume_from_array(scene, kept.astype(dtype), ijkToRAS, name + " labels",
                                  "vtkMRMLLabelMapVolumeNode")
    colorNode = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(name + " colors"))
    try:
        colorNode.SetTypeToUser()
        colorNode.SetNumberOfColors(max(labels, default=0) + 1)
        colorNode.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for organ in organs:
            r, g, b = (float(c) / 255.0 for c in organ["color"])
            colorNode.SetColor(int(organ["label"]), organ["name"], r, g, b, 1.0)
        labelNode.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())

        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
        else:
            segmentationNode.GetSegmentation().RemoveAllSegments()
        segmentationNode.CreateDefaultDisplayNodes()
        # Segments take their names and colours from the label map's colour table.
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelNode, segmentationNode):
            raise MosmosError(f"{name}: could not import the label map into a segmentation")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode or labelNode)
    finally:
        scene.RemoveNode(labelNode)
        scene.RemoveNode(colorNode)

    segmentation = segmentationNode.GetSegmentation()
    for organ in organs:
        segment = segmentation.GetSegment(segment_id(segmentationNode, organ["name"]) or "")
        if segment is None:
            continue  # organ predicted nowhere in this volume: no empty segment to confuse the user
        entry = terminology_entry(organ["name"])
        if entry:
            segment.SetTag(segment.GetTerminologyEntryTagName(), entry)

    if referenceVolumeNode is not None:
        place_next_to(segmentationNode, referenceVolumeNode)
    return segmentationNode


def closed_surfaces(labelmap: np.ndarray, ijkToRAS: np.ndarray, labels: dict[str, int],
                    smoothing: float = 0.5) -> dict[str, vtk.vtkPolyData]:
    """Smoothed RAS surfaces of ``labels`` (segment name -> label value) in ``labelmap`` (k, j, i), made as
    Slicer's binary-labelmap-to-closed-surface rule makes them (flying edges, windowed-sinc smoothing with pass
    band 10^(-4 * smoothing), normals). Only VTK algorithms and numpy, no node: Slicer's own conversion holds
    Python's lock for the whole call (about a second per organ on 2 cores), while a VTK algorithm's Update()
    lets it go, so this can run in a worker thread while the web page's server loop keeps answering."""
    surfaces = {}
    for name, label in labels.items():
        mask = labelmap == label
        found = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], \
            np.nonzero(mask.any(axis=(0, 1)))[0]
        if not all(len(f) for f in found):
            continue
        low = [int(f[0]) for f in found]
        # Cropped to the organ, with one empty voxel around it so that its surface is closed.
        crop = np.pad(mask[found[0][0]:found[0][-1] + 1, found[1][0]:found[1][-1] + 1,
                           found[2][0]:found[2][-1] + 1].astype(np.uint8), 1)
        image = vtk.vtkImageData()
        image.SetDimensions(crop.shape[2], crop.shape[1], crop.shape[0])
        image.SetOrigin(low[2] - 1, low[1] - 1, low[0] - 1)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(crop.ravel(), deep=True))
        edges = vtk.vtkDiscreteFlyingEdges3D()
        edges.SetInputData(image)
        edges.SetValue(0, 1)
        edges.ComputeGradientsOff()
        edges.ComputeNormalsOff()
        edges.ComputeScalarsOff()
        smoother = vtk.vtkWindowedSincPolyDataFilter()
        smoother.SetInputConnection(edges.GetOutputPort())
        smoother.SetNumberOfIterations(20)
        smoother.SetPassBand(10.0 ** (-4.0 * smoothing))
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        toRAS = vtk.vtkTransformPolyDataFilter()
        toRAS.SetInputConnection(smoother.GetOutputPort())
        transform = vtk.vtkTransform()
        transform.SetMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijkToRAS, dtype=float)))
        toRAS.SetTransform(transform)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(toRAS.GetOutputPort())
        normals.ConsistencyOn()
        normals.SplittingOff()
        normals.Update()
        surface = vtk.vtkPolyData()
        surface.ShallowCopy(normals.GetOutput())
        surfaces[name] = surface
    return surfaces


def set_closed_surfaces(segmentationNode, surfaces: dict[str, vtk.vtkPolyData]) -> None:
    """Give the named segments these closed surfaces (from closed_surfaces), which the 3D view then shows."""
    segmentation = segmentationNode.GetSegmentation()
    representation = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    for name, surface in surfaces.items():
        segment = segmentation.GetSegment(segment_id(segmentationNode, name) or "")
        if segment is not None:
            segment.AddRepresentation(representation, surface)
    segmentation.InvokeEvent(slicer.vtkSegmentation.ContainedRepresentationNamesModified)


def segment_id(segmentationNode, segmentName: str) -> str | None:
    sid = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName)
    return sid or None


def segment_names(segmentationNode) -> list[str]:
    seg = segmentationNode.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def place_next_to(node, referenceVolumeNode) -> None:
    """Put ``node`` in the same subject-hierarchy folder/study as the volume, under the same transform."""
    scene = node.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is not None:
        volumeItem = sh.GetItemByDataNode(referenceVolumeNode)
        if volumeItem:
            parentItem = sh.GetItemParent(volumeItem)
            nodeItem = sh.GetItemByDataNode(node)
            if nodeItem:
                sh.SetItemParent(nodeItem, parentItem)
            else:
                # Without the Subject Hierarchy module logic (slicer-core) nodes get no item on their own.
                sh.CreateItem(parentItem, node)
    node.SetAndObserveTransformNodeID(referenceVolumeNode.GetTransformNodeID())


def export_segment_array(segmentationNode, segmentName: str, referenceVolumeNode) -> np.ndarray:
    """A segment as a (k, j, i) uint8 0/1 array on the reference volume's grid (for checks and tests)."""
    sid = segment_id(segmentationNode, segmentName)
    if sid is None:
        raise MosmosError(f"{segmentationNode.GetName()}: no segment named {segmentName!r}")
    scene = segmentationNode.GetScene()
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("export"))
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(sid)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentationNode, ids, labelNode, referenceVolumeNode):
            raise MosmosError(f"{segmentationNode.GetName()}: could not export segment {segmentName!r}")
        array, _ = array_from_volume(labelNode)
    finally:
        scene.RemoveNode(labelNode)
    return (array > 0).astype(np.uint8)


def write_segmentation(segmentationNode, path: str) -> None:
    """Write a .seg.nrrd (segment names, colours and terminology kept) via the storage node."""
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetScene(segmentationNode.GetScene())
    storage.SetFileName(path)
    storage.SetUseCompression(True)
    if not storage.WriteData(segmentationNode):
        raise MosmosError(f"{path}: cannot write segmentation")
