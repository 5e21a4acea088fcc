"""A segmentation node with named, coloured, standard-coded segments from a label map."""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from mosmos.errors import MosmosError

from .terminology import terminology_entry
from .volumes import array_from_volume, volume_from_array


def build_segmentation_node(scene, labelmap: np.ndarray, ijk_to_ras_matrix: np.ndarray, organs: list[dict],
                            name: str = "MOSMOS segmentation", reference_volume_node=None, segmentation_node=None):
    """Segments for ``organs`` ({"name", "label", "color" 0..255}) from ``labelmap`` (k, j, i) on the grid
    ``ijk_to_ras_matrix``. Label values not listed in ``organs`` are ignored. An existing ``segmentation_node`` is
    emptied and refilled, so a user's choice of output node is kept. Returns the segmentation node."""
    organs = [o for o in organs if int(o["label"]) > 0]
    labels = [int(o["label"]) for o in organs]
    if len(set(labels)) != len(labels):
        raise MosmosError(f"{name}: duplicate label values in {labels}")
    if len({o["name"] for o in organs}) != len(organs):
        raise MosmosError(f"{name}: duplicate organ names")

    kept = np.where(np.isin(labelmap, labels), labelmap, 0)
    dtype = np.uint8 if max(labels, default=0) < 256 else np.uint16
    label_node = volume_from_array(scene, kept.astype(dtype), ijk_to_ras_matrix, name + " labels",
                                  "vtkMRMLLabelMapVolumeNode")
    color_node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(name + " colors"))
    try:
        color_node.SetTypeToUser()
        color_node.SetNumberOfColors(max(labels, default=0) + 1)
        color_node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for organ in organs:
            r, g, b = (float(c) / 255.0 for c in organ["color"])
            color_node.SetColor(int(organ["label"]), organ["name"], r, g, b, 1.0)
        label_node.GetDisplayNode().SetAndObserveColorNodeID(color_node.GetID())

        if segmentation_node is None:
            segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
        else:
            segmentation_node.GetSegmentation().RemoveAllSegments()
        segmentation_node.CreateDefaultDisplayNodes()
        # Segments take their names and colours from the label map's colour table.
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation_node):
            raise MosmosError(f"{name}: could not import the label map into a segmentation")
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node or label_node)
    finally:
        scene.RemoveNode(label_node)
        scene.RemoveNode(color_node)

    segmentation = segmentation_node.GetSegmentation()
    for organ in organs:
        segment = segmentation.GetSegment(segment_id(segmentation_node, organ["name"]) or "")
        if segment is None:
            continue  # organ predicted nowhere in this volume: no empty segment to confuse the user
        entry = terminology_entry(organ["name"])
        if entry:
            segment.SetTag(segment.GetTerminologyEntryTagName(), entry)

    if reference_volume_node is not None:
        place_next_to(segmentation_node, reference_volume_node)
    return segmentation_node


def closed_surfaces(labelmap: np.ndarray, ijk_to_ras_matrix: np.ndarray, labels: dict[str, int],
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
        to_ras = vtk.vtkTransformPolyDataFilter()
        to_ras.SetInputConnection(smoother.GetOutputPort())
        transform = vtk.vtkTransform()
        transform.SetMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras_matrix, dtype=float)))
        to_ras.SetTransform(transform)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(to_ras.GetOutputPort())
        normals.ConsistencyOn()
        normals.SplittingOff()
        normals.Update()
        surface = vtk.vtkPolyData()
        surface.ShallowCopy(normals.GetOutput())
        surfaces[name] = surface
    return surfaces


def set_closed_surfaces(segmentation_node, surfaces: dict[str, vtk.vtkPolyData]) -> None:
    """Give the named segments these closed surfaces (from closed_surfaces), which the 3D view then shows."""
    segmentation = segmentation_node.GetSegmentation()
    representation = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    for name, surface in surfaces.items():
        segment = segmentation.GetSegment(segment_id(segmentation_node, name) or "")
        if segment is not None:
            segment.AddRepresentation(representation, surface)
    segmentation.InvokeEvent(slicer.vtkSegmentation.ContainedRepresentationNamesModified)


def segment_id(segmentation_node, segment_name: str) -> str | None:
    sid = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(segment_name)
    return sid or None


def segment_names(segmentation_node) -> list[str]:
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def place_next_to(node, reference_volume_node) -> None:
    """Put ``node`` in the same subject-hierarchy folder/study as the volume, under the same transform."""
    scene = node.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is not None:
        volume_item = sh.GetItemByDataNode(reference_volume_node)
        if volume_item:
            parent_item = sh.GetItemParent(volume_item)
            node_item = sh.GetItemByDataNode(node)
            if node_item:
                sh.SetItemParent(node_item, parent_item)
            else:
                # Without the Subject Hierarchy module logic (slicer-core) nodes get no item on their own.
                sh.CreateItem(parent_item, node)
    node.SetAndObserveTransformNodeID(reference_volume_node.GetTransformNodeID())


def export_segment_array(segmentation_node, segment_name: str, reference_volume_node) -> np.ndarray:
    """A segment as a (k, j, i) uint8 0/1 array on the reference volume's grid (for checks and tests)."""
    sid = segment_id(segmentation_node, segment_name)
    if sid is None:
        raise MosmosError(f"{segmentation_node.GetName()}: no segment named {segment_name!r}")
    scene = segmentation_node.GetScene()
    label_node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("export"))
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(sid)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, label_node, reference_volume_node):
            raise MosmosError(f"{segmentation_node.GetName()}: could not export segment {segment_name!r}")
        array, _ = array_from_volume(label_node)
    finally:
        scene.RemoveNode(label_node)
    return (array > 0).astype(np.uint8)


def write_segmentation(segmentation_node, path: str) -> None:
    """Write a .seg.nrrd (segment names, colours and terminology kept) via the storage node."""
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetScene(segmentation_node.GetScene())
    storage.SetFileName(path)
    storage.SetUseCompression(True)
    if not storage.WriteData(segmentation_node):
        raise MosmosError(f"{path}: cannot write segmentation")
