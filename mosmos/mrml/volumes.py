"""Volume nodes <-> numpy arrays and files, without slicer.app (works in Slicer and in slicer-core)."""

from __future__ import annotations

import os

import numpy as np
import slicer
import vtk

from mosmos.errors import MosmosError


def ijk_to_ras(volume_node) -> np.ndarray:
    """The node's own IJK-to-RAS matrix (4x4); parent transforms are not applied."""
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def array_from_volume(volume_node) -> tuple[np.ndarray, np.ndarray]:
    """(voxels in (k, j, i) order as an owned copy, IJK-to-RAS 4x4)."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise MosmosError(f"{volume_node.GetName() if volume_node else 'volume'}: no image data")
    if volume_node.GetImageData().GetNumberOfScalarComponents() != 1:
        raise MosmosError(f"{volume_node.GetName()}: colour or vector volumes cannot be segmented; "
                          "convert it to a scalar volume first")
    # arrayFromVolume is a view on VTK memory that dies with the node: copy it.
    return np.array(slicer.util.arrayFromVolume(volume_node), copy=True), ijk_to_ras(volume_node)


def volume_from_array(scene, array: np.ndarray, ijk_to_ras_matrix: np.ndarray, name: str,
                      class_name: str = "vtkMRMLScalarVolumeNode", node=None):
    """Add (or fill ``node``) a volume node with ``array`` in (k, j, i) order on the given grid."""
    if array.dtype == np.int64 or array.dtype == np.uint64:
        # VTK image data in Slicer rejects 64-bit integers.
        array = array.astype(np.int32)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_ras_matrix, dtype=float)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.CreateDefaultDisplayNodes()
    return node


def read_volume(path: str | os.PathLike, scene, name: str | None = None, labelmap: bool = False):
    """Read a NRRD / NIfTI / MetaImage file into a new volume node (no slicer.app needed)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MosmosError(f"{path}: file not found")
    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name or _stem(path)))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        scene.RemoveNode(node)
        raise MosmosError(f"{path}: cannot read as a volume (NRRD, NIfTI or MetaImage expected)")
    node.CreateDefaultDisplayNodes()
    return node


def write_volume(volume_node, path: str | os.PathLike) -> None:
    """Write a volume node to NRRD / NIfTI, chosen by the file extension."""
    path = os.fspath(path)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetScene(volume_node.GetScene())
    storage.SetFileName(path)
    storage.SetUseCompression(path.endswith((".gz", ".nrrd", ".seg.nrrd")))
    if not storage.WriteData(volume_node):
        raise MosmosError(f"{path}: cannot write volume")


def same_grid(shape_a, ras_a, shape_b, ras_b, tol: float = 1e-3) -> bool:
    return tuple(shape_a) == tuple(shape_b) and np.allclose(ras_a, ras_b, atol=tol)


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".nhdr", ".mha", ".mhd"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]
