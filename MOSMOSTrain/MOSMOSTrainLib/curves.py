"""Training curves as MRML nodes: a table of step losses, a table of validation results, and a plot chart whose
series read their columns (x: step), so Slicer's plot view redraws as rows arrive. Tables can be saved as CSV
or TSV from Slicer like any other table."""

from __future__ import annotations

import math

import slicer
import vtk

STEP_COLUMNS = {"pretrain": ("step", "epoch", "loss", "irc", "mlr", "lr"),
                "finetune": ("step", "epoch", "loss", "seg", "pta", "lr")}
VAL_COLUMNS = {"pretrain": ("step", "epoch", "val_loss", "val_irc", "val_mlr", "val_map"),
               "finetune": ("step", "epoch", "val_dice")}
# (column, table, colour): training losses as lines, validation as lines with markers. The learning rate
# stays in the table: on the loss axis it would be a flat line at zero.
SERIES = {"pretrain": (("loss", "step", (0.1, 0.1, 0.1)), ("irc", "step", (0.2, 0.45, 0.8)),
                       ("mlr", "step", (0.85, 0.45, 0.1)), ("val_loss", "val", (0.8, 0.1, 0.1)),
                       ("val_map", "val", (0.1, 0.6, 0.2))),
          "finetune": (("loss", "step", (0.1, 0.1, 0.1)), ("seg", "step", (0.2, 0.45, 0.8)),
                       ("pta", "step", (0.85, 0.45, 0.1)), ("val_dice", "val", (0.1, 0.6, 0.2)))}
TITLES = {"pretrain": "MOSMOS pre-training", "finetune": "MOSMOS fine-tuning"}


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class TrainingCurves:
    """The nodes of one run (a resumed run keeps adding to them)."""

    def __init__(self, stage: str, scene=None):
        scene = scene or slicer.mrmlScene
        self.stage = stage
        title = TITLES[stage]
        self.stepTable = self._table(scene, f"{title} losses", STEP_COLUMNS[stage])
        self.valTable = self._table(scene, f"{title} validation", VAL_COLUMNS[stage])
        self.chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{title} curves"))
        self.chart.SetTitle(title)
        self.chart.SetXAxisTitle("step")
        self.chart.SetYAxisTitle("loss / validation metric")
        self.series = {}
        for column, which, color in SERIES[stage]:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{title} {column}"))
            series.SetAndObserveTableNodeID((self.stepTable if which == "step" else self.valTable).GetID())
            series.SetXColumnName("step")
            series.SetYColumnName(column)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone if which == "step"
                                  else slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetColor(*color)
            self.chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.series[column] = series

    @staticmethod
    def _table(scene, name: str, columns):
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
        for column in columns:
            array = vtk.vtkDoubleArray()
            array.SetName(column)
            node.AddColumn(array)
        node.SetLocked(True)  # a record of the run, not something to edit
        return node

    @property
    def nodes(self) -> list:
        return [self.stepTable, self.valTable, self.chart, *self.series.values()]

    def add(self, event: dict) -> bool:
        """Append a "step" or "val" event as a row; drop rows a resumed run is about to redo ("start")."""
        kind = event.get("event")
        if kind == "step":
            self._append(self.stepTable, event)
        elif kind == "val":
            row = dict(event)
            for organ, dice in (event.get("dice") or {}).items():  # per-organ Dice as extra columns
                row[f"dice {organ}"] = dice
            self._append(self.valTable, row)
        elif kind == "start":
            self.truncate(int(event.get("resumed_step") or 0))
        else:
            return False
        return True

    def _append(self, node, row: dict) -> None:
        table = node.GetTable()
        rows = table.GetNumberOfRows()
        for name in row:
            if name.startswith("dice ") and table.GetColumnByName(name) is None:
                array = vtk.vtkDoubleArray()
                array.SetName(name)
                array.SetNumberOfTuples(rows)
                array.Fill(math.nan)
                node.AddColumn(array)
        for i in range(table.GetNumberOfColumns()):
            column = table.GetColumn(i)
            column.InsertNextValue(_number(row.get(column.GetName())))
            column.Modified()
        table.Modified()

    def truncate(self, step: int) -> None:
        """Keep the rows up to ``step``: a resumed run restarts from its last checkpoint."""
        for node in (self.stepTable, self.valTable):
            table = node.GetTable()
            steps = table.GetColumnByName("step")
            keep = 0
            while keep < steps.GetNumberOfTuples() and steps.GetValue(keep) <= step:
                keep += 1
            if keep == table.GetNumberOfRows():
                continue
            for i in range(table.GetNumberOfColumns()):
                table.GetColumn(i).SetNumberOfTuples(keep)
                table.GetColumn(i).Modified()
            table.Modified()
