"""Organ volumes (mL) as a table node."""

from __future__ import annotations

import numpy as np
import vtk

COLUMNS = ("organ", "label", "volume mL")


def voxel_volume_ml(ijk_to_ras_matrix: np.ndarray) -> float:
    return abs(float(np.linalg.det(np.asarray(ijk_to_ras_matrix)[:3, :3]))) / 1000.0


def organ_volumes_ml(labelmap: np.ndarray, ijk_to_ras_matrix: np.ndarray, organs: list[dict]) -> dict[str, float]:
    counts = np.bincount(labelmap.ravel().astype(np.int64), minlength=max([int(o["label"]) for o in organs] + [0]) + 1)
    voxel = voxel_volume_ml(ijk_to_ras_matrix)
    return {o["name"]: float(counts[int(o["label"])]) * voxel for o in organs}


def volume_table_node(scene, rows: list[tuple[str, int, float]], name: str = "MOSMOS organ volumes", table_node=None):
    """rows: (organ, label, volume mL). An existing ``table_node`` is overwritten."""
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = vtk.vtkTable()
    organ, label, volume = vtk.vtkStringArray(), vtk.vtkIntArray(), vtk.vtkDoubleArray()
    for array, column in zip((organ, label, volume), COLUMNS):
        array.SetName(column)
        table.AddColumn(array)
    table.SetNumberOfRows(len(rows))
    for i, (o, lab, ml) in enumerate(rows):
        organ.SetValue(i, o)
        label.SetValue(i, int(lab))
        volume.SetValue(i, round(float(ml), 3))
    table_node.SetAndObserveTable(table)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetColumnUnitLabel("volume mL", "mL")
    table_node.SetColumnDescription("volume mL", "Organ volume: voxel count times voxel volume")
    table_node.SetLocked(True)
    return table_node
