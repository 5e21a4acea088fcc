"""Organ volumes (mL) and their QC (mosmos.qc: status and reasons) as a table node."""

from __future__ import annotations

import numpy as np
import vtk

COLUMNS = ("organ", "label", "volume mL", "status", "reasons")
# The QC flags' colours wherever the table is shown (the Slicer module, the web page): green, amber, red.
STATUS_COLORS = {"ok": "#2e7d32", "check": "#e08600", "fail": "#c62828"}


def voxel_volume_ml(ijk_to_ras_matrix: np.ndarray) -> float:
    return abs(float(np.linalg.det(np.asarray(ijk_to_ras_matrix)[:3, :3]))) / 1000.0


def organ_volumes_ml(labelmap: np.ndarray, ijk_to_ras_matrix: np.ndarray, organs: list[dict]) -> dict[str, float]:
    counts = np.bincount(labelmap.ravel().astype(np.int64), minlength=max([int(o["label"]) for o in organs] + [0]) + 1)
    voxel = voxel_volume_ml(ijk_to_ras_matrix)
    return {o["name"]: float(counts[int(o["label"])]) * voxel for o in organs}


def volume_rows(organs: list[dict], volumes_ml: dict[str, float]) -> list[tuple[str, int, float, str, str]]:
    """The table's rows: organ, label, volume mL, QC status and reasons ("; "-joined) of ``organs`` as `mosmos
    segment --volumes` lists them (status and reasons empty where QC did not run)."""
    return [(o["name"], int(o["label"]), volumes_ml[o["name"]], o.get("status", ""), "; ".join(o.get("reasons", [])))
            for o in organs]


def volume_table_node(scene, rows: list[tuple[str, int, float, str, str]], name: str = "MOSMOS organ volumes",
                      table_node=None):
    """rows: (organ, label, volume mL, status, reasons), as volume_rows makes them. An existing ``table_node`` is
    overwritten."""
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = vtk.vtkTable()
    arrays = (vtk.vtkStringArray(), vtk.vtkIntArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray(),
              vtk.vtkStringArray())
    for array, column in zip(arrays, COLUMNS):
        array.SetName(column)
        table.AddColumn(array)
    table.SetNumberOfRows(len(rows))
    organ, label, volume, status, reasons = arrays
    for i, (o, lab, ml, flag, why) in enumerate(rows):
        organ.SetValue(i, o)
        label.SetValue(i, int(lab))
        volume.SetValue(i, round(float(ml), 3))
        status.SetValue(i, flag)
        reasons.SetValue(i, why)
    table_node.SetAndObserveTable(table)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetColumnUnitLabel("volume mL", "mL")
    table_node.SetColumnDescription("volume mL", "Organ volume: voxel count times voxel volume")
    table_node.SetColumnDescription("status", "Quality check: ok, check (review this organ) or fail (implausible)")
    table_node.SetColumnDescription("reasons", "Why the organ is flagged, in plain sentences")
    table_node.SetLocked(True)
    return table_node
