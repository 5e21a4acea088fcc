import logging
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.util import VTKObservationMixin

from mosmos.mrml import models, pipeline, tables, terminology
from mosmos.mrml.process import Cancelled
from mosmos.options import AUTO, DEVICES

#
# MOSMOSSegment
#


class MOSMOSSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MOSMOS Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MOSMOS developers"]
        self.parent.helpText = _("""
Segment organs in CT or MRI by typing their names (for example "liver, spleen, left kidney"), with a MOSMOS
model: CLIP encoders pre-trained on radiology image-report pairs and fine-tuned for segmentation. Results are
named, coloured segments with standard (SNOMED CT) terminology, per-organ attention maps that show where each
organ name looks, and a table of organ volumes in mL.
Models live in a models folder (default ~/MOSMOS/models, or $MOSMOS_MODELS_DIR); add one with
"Add model file...". From the Python console: <code>MOSMOSSegmentLogic().segment(volumeNode, ["liver"])</code>.
""")
        self.parent.acknowledgementText = _("""
Method: Tian et al., "MOSMOS: Multi-organ segmentation facilitated by medical report supervision"
(arXiv 2409.02418). Segment terminology codes from TotalSegmentator (Wasserthal et al., Apache-2.0).
""")
        # Slicer's terminology selector resolves MOSMOS segments (also ones loaded from files) once the MOSMOS
        # context is loaded: at start-up, when the Terminologies module exists.
        slicer.app.connect("startupCompleted()", registerTerminology)


def registerTerminology() -> None:
    try:
        terminology.load_context(slicer.modules.terminologies.logic())
    except Exception:  # start-up goes on; segments keep their codes, only the selector cannot show them
        logging.exception("MOSMOS terminology context could not be loaded")


#
# Parameter node
#


@parameterNodeWrapper
class MOSMOSSegmentParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    tags: str = ""
    computeAttention: bool = True
    quickPreview: bool = False
    modelsFolder: Path = models.default_models_dir()
    device: Annotated[str, Choice(list(DEVICES))] = AUTO
    attentionOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


#
# MOSMOSSegmentWidget
#


class MOSMOSSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    MODEL_SETTINGS_KEY = "MOSMOS/Model"

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self._organCheckBoxes = {}
        self._attentionNodes = {}
        self._listedFolder = None  # the models folder refreshModels() listed
        self._shownOpacity = None  # the attention opacity showAttention() used

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MOSMOSSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MOSMOSSegmentLogic()

        self.ui.progressBar.hide()
        qt.QVBoxLayout(self.ui.organsCheckBoxArea)
        self._completer = qt.QCompleter([], self.ui.tagsLineEdit)
        self._completer.setCaseSensitivity(qt.Qt.CaseInsensitive)
        self._completer.setWidget(self.ui.tagsLineEdit)
        self._completer.connect("activated(QString)", self.onCompletion)
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModel)
        self.ui.downloadModelButton.connect("clicked(bool)", self.onDownloadModel)
        self._download = None
        self._downloadTimer = qt.QTimer()
        self._downloadTimer.setInterval(200)
        self._downloadTimer.connect("timeout()", self.onDownloadPoll)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.tagsLineEdit.connect("textEdited(QString)", self.onTagsEdited)
        self.ui.attentionTagComboBox.connect("currentIndexChanged(int)", self.showAttention)
        # The models folder and the opacity are followed on the parameter node (onParameterNodeModified): a slot
        # on their widgets' signals would run before the GUI connectors update the node, and read the old value.

        self.initializeParameterNode()  # lists the models folder's models

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cleanup()
            self._job = None
        if self._timer is not None:
            self._timer.stop()
        if self._download is not None:
            self._download.cancel()
            self._downloadTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        # MOSMOSTrain may have added a fine-tuned model while this module was hidden.
        self.refreshModels()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carry a "SlicerParameterName" property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p and p.modelsFolder != self._listedFolder:
            self.refreshModels()
        if p and p.attentionOpacity != self._shownOpacity:
            self.showAttention()
        self._updateApplyButton()

    def _updateApplyButton(self, caller=None, event=None) -> None:
        if self._job is not None:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running segmentation.")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._selectedModel())
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = (_("Segment the selected organs.") if ready
                                       else _("Select an input volume and a model."))

    # Models and organs

    def _selectedModel(self):
        path = self.ui.modelComboBox.currentData
        return Path(path) if path else None

    def refreshModels(self) -> None:
        folder = self._parameterNode.modelsFolder if self._parameterNode else models.default_models_dir()
        self._listedFolder = folder
        wanted = str(self._selectedModel() or qt.QSettings().value(self.MODEL_SETTINGS_KEY, ""))
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        installed = []
        # Header-only reads: listing needs none of the packages installed at first use.
        with slicer.util.tryWithErrorDisplay(_("Cannot list the models in {folder}.").format(folder=folder)):
            installed = models.list_models(folder)
        for info in installed:
            combo.addItem(info.display_name, str(info.path))
            combo.setItemData(combo.count - 1, models.tooltip(info), qt.Qt.ToolTipRole)
        if not installed:
            combo.addItem(_("(no model in the models folder: add one)"), "")
        index = combo.findData(wanted)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(wasBlocked)
        self.onModelChanged()

    def onModelChanged(self, *unused) -> None:
        path = self._selectedModel()
        organs = ()
        if path:
            qt.QSettings().setValue(self.MODEL_SETTINGS_KEY, str(path))
            with slicer.util.tryWithErrorDisplay(_("Cannot read this model file.")):
                organs = models.model_info(path).organs
        self._completer.setModel(qt.QStringListModel(list(organs)))
        layout = self.ui.organsCheckBoxArea.layout()
        for box in self._organCheckBoxes.values():
            layout.removeWidget(box)
            box.deleteLater()
        self._organCheckBoxes = {}
        for organ in organs:
            box = qt.QCheckBox(organ)
            box.connect("toggled(bool)", self.onOrganToggled)
            layout.addWidget(box)
            self._organCheckBoxes[organ] = box
        self._syncCheckBoxes()
        self._updateApplyButton()

    def _typedTags(self) -> list:
        from mosmos.tags import parse_tag_list

        try:
            return parse_tag_list(self.ui.tagsLineEdit.text)
        except Exception:  # an unfinished or unknown name while typing: checked boxes simply stay as they are
            return []

    def _syncCheckBoxes(self) -> None:
        typed = set(self._typedTags())
        for organ, box in self._organCheckBoxes.items():
            wasBlocked = box.blockSignals(True)
            box.checked = organ in typed
            box.blockSignals(wasBlocked)

    def onOrganToggled(self, checked) -> None:
        typed = [t for t in self._typedTags() if t not in self._organCheckBoxes]
        typed += [organ for organ, box in self._organCheckBoxes.items() if box.checked]
        self._parameterNode.tags = ", ".join(typed)

    def onTagsEdited(self, text) -> None:
        # Complete the organ name being typed after the last comma.
        prefix = text.split(",")[-1].strip()
        self._completer.setCompletionPrefix(prefix)
        if prefix:
            self._completer.complete()
        self._syncCheckBoxes()

    def onCompletion(self, organ) -> None:
        parts = self.ui.tagsLineEdit.text.split(",")[:-1] + [" " + organ]
        self._parameterNode.tags = ",".join(parts).strip() + ", "
        self._syncCheckBoxes()

    def onAddModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Add MOSMOS model file"), "",
                                              _("MOSMOS models (*.mosmos *.safetensors);;All files (*)"))
        if not path:
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot add this model file."), waitCursor=True):
            info = models.add_model_file(path, self._parameterNode.modelsFolder, force=True)
            qt.QSettings().setValue(self.MODEL_SETTINGS_KEY, str(info.path))
            self.refreshModels()
            self.ui.statusLabel.text = _("Added {name}: {organs}").format(name=info.name, organs=", ".join(info.organs))

    def onDownloadModel(self) -> None:
        if self._download is not None:
            self._download.cancel(wait=False)
            return
        source = qt.QInputDialog.getText(slicer.util.mainWindow(), _("Download model"),
                                         _("Model URL, or a model index URL and a model name:"))
        if not source.strip():
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot download this model."), waitCursor=True):
            self._download = models.ModelDownload(source.strip(), self._parameterNode.modelsFolder).start()
            self.ui.downloadModelButton.text = _("Cancel download")
            self.ui.statusLabel.text = _("Downloading...")
            self._downloadTimer.start()

    def onDownloadPoll(self) -> None:
        download = self._download
        for event in download.poll():
            if event.get("event") == "progress" and event.get("total"):
                self.ui.statusLabel.text = _("Downloading: {percent} %").format(
                    percent=100 * event["done"] // event["total"])
            elif event.get("event") == "exit":
                self._downloadTimer.stop()
                self._download = None
                self.ui.downloadModelButton.text = _("Download model...")
                self.ui.statusLabel.text = _("Download failed.")
                with slicer.util.tryWithErrorDisplay(_("The model could not be downloaded.")):
                    info = download.result()
                    if info is None:
                        self.ui.statusLabel.text = _("Download cancelled (downloading it again resumes).")
                        return
                    qt.QSettings().setValue(self.MODEL_SETTINGS_KEY, str(info.path))
                    self.refreshModels()
                    self.ui.statusLabel.text = _("Downloaded {name}: {organs}").format(
                        name=info.name, organs=", ".join(info.organs))
                return

    # Running

    def onApplyButton(self) -> None:
        if self._job is not None:
            # Returns at once: the process tree is stopped in a thread and the timer sees its exit.
            with slicer.util.tryWithErrorDisplay(_("Cannot cancel.")):
                self._job.cancel(wait=False)
            self.ui.statusLabel.text = _("Cancelling...")
            return
        p = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                # SegmentationJob.start() runs the dependency guard (a fresh Slicer installs torch etc. here).
                self._job = pipeline.SegmentationJob(p.inputVolume, p.tags, self._selectedModel(), p.device,
                                                     p.computeAttention, p.outputSegmentation,
                                                     fast=p.quickPreview)
                self._job.start()
        except Exception as e:
            if self._job is not None:
                self._job.cleanup()
                self._job = None
            slicer.util.errorDisplay(_("Segmentation could not start: {error}").format(error=e))
            logging.exception("MOSMOS segmentation could not start")
            return
        self.ui.progressBar.setRange(0, 0)
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Segmenting...")
        self._updateApplyButton()
        self._timer.start()

    def onPoll(self) -> None:
        # A timer slot: an error stops the timer (one dialog, not one every 200 ms).
        job = self._job
        try:
            for event in job.process.poll():
                kind = event.get("event")
                if kind == "progress" and event.get("total"):
                    self.ui.progressBar.setRange(0, int(event["total"]))
                    self.ui.progressBar.setValue(int(event["done"]))
                elif kind == "status":  # a long step with no progress to show (a first compile)
                    self.ui.statusLabel.text = _("Segmenting: {step}").format(step=event.get("message", ""))
                elif kind == "log":
                    logging.info(f"mosmos segment: {event.get('line', '')}")
                elif kind == "exit":
                    self._timer.stop()
                    self._finish(job)
                    return
        except Exception as e:
            self._timer.stop()
            job.cleanup()
            self._job = None
            self.ui.progressBar.hide()
            self._updateApplyButton()
            logging.exception("MOSMOS segmentation")
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=e))

    def _finish(self, job) -> None:
        try:
            with slicer.util.WaitCursor():
                outputs = job.finish()
        except Cancelled:
            self.ui.statusLabel.text = _("Cancelled.")
        except Exception as e:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=e))
        else:
            self._showResults(outputs)
        finally:
            job.cleanup()
            self._job = None
            self.ui.progressBar.hide()
            self._updateApplyButton()

    def _showResults(self, outputs) -> None:
        segNode = outputs.segmentation_node
        # Through the logic: the widget's parameter node is None after a scene close while the module was hidden.
        self.logic.getParameterNode().outputSegmentation = segNode
        segNode.CreateClosedSurfaceRepresentation()
        self.ui.volumesTableView.setMRMLTableNode(outputs.table_node)
        self._showFlags(outputs.table_node)
        self._attentionNodes = outputs.attention_nodes
        combo = self.ui.attentionTagComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("(none)"))
        for tag in outputs.attention_nodes:
            combo.addItem(tag)
        combo.blockSignals(wasBlocked)
        found = ", ".join(o["name"] for o in outputs.organs) or _("no organ")
        self.ui.statusLabel.text = "\n".join([_("Done: {organs}.").format(organs=found)] + list(outputs.notices))
        combo.setCurrentIndex(1 if outputs.attention_nodes else 0)
        self.showAttention()

    def _showFlags(self, tableNode) -> None:
        """Each organ's QC status in its flag's colour with its reasons as the tooltip (their column hidden)."""
        view = self.ui.volumesTableView
        model = view.tableModel()
        status, reasons = tables.COLUMNS.index("status"), tables.COLUMNS.index("reasons")
        view.setColumnHidden(reasons, True)
        # Styling an item emits itemChanged, which the model would write back into the table node.
        wasBlocked = model.blockSignals(True)
        for row in range(tableNode.GetNumberOfRows()):
            item = model.item(row, status)
            color = tables.STATUS_COLORS.get(tableNode.GetCellText(row, status))
            if color:
                item.setForeground(qt.QBrush(qt.QColor(color)))
                font = item.font()
                font.setBold(True)
                item.setFont(font)
            item.setToolTip(tableNode.GetCellText(row, reasons))
        model.blockSignals(wasBlocked)
        view.viewport().update()

    def showAttention(self, *unused) -> None:
        p = self.logic.getParameterNode()
        self._shownOpacity = p.attentionOpacity
        if slicer.app.commandOptions().noMainWindow or slicer.app.layoutManager() is None:
            return
        if not self._attentionNodes:
            return  # no maps yet: leave the views as they are
        node = self._attentionNodes.get(self.ui.attentionTagComboBox.currentText)
        slicer.util.setSliceViewerLayers(background=p.inputVolume, foreground=node,
                                         foregroundOpacity=p.attentionOpacity if node else 0.0)


#
# MOSMOSSegmentLogic
#


class MOSMOSSegmentLogic(ScriptedLoadableModuleLogic):
    """Segment from Python without the GUI:

    segNode = MOSMOSSegmentLogic().segment(volumeNode, ["liver", "spleen"], model="abdomen.mosmos", device="cpu")
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastOutputs = None
        if hasattr(slicer.modules, "terminologies"):  # also when the module was loaded after start-up
            registerTerminology()

    def getParameterNode(self):
        return MOSMOSSegmentParameterNode(super().getParameterNode())

    def segment(self, volumeNode, tags=None, model=None, device="auto", returnAttention=False,
                progress=None, segmentationNode=None, fast=False):
        """Blocking. ``tags``: list or "liver, spleen" (None: every organ of the model); ``model``: file, or a
        model's name in the models folder (None: the only one installed). Returns the segmentation node, or
        (segmentation node, {tag: attention volume node}) with ``returnAttention``. The organ volume table is
        ``self.lastOutputs.table_node``. ``fast``: quick preview."""
        self.lastOutputs = pipeline.segment_volume_node(volumeNode, tags, model, device, returnAttention,
                                                        progress, segmentationNode, fast=fast)
        if returnAttention:
            return self.lastOutputs.segmentation_node, self.lastOutputs.attention_nodes
        return self.lastOutputs.segmentation_node


#
# MOSMOSSegmentTest
#


class MOSMOSSegmentTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantom()

    def test_SegmentPhantom(self):
        import numpy as np
        from mosmos.tags import color_for
        from mosmos.mrml import segmentation, selftest, volumes

        self.delayDisplay("Making a phantom CT and a tiny model (the dependencies are installed first)")
        volumeNode, modelPath = selftest.segmentation_inputs(slicer.mrmlScene, slicer.app.temporaryPath)

        self.delayDisplay("Segmenting")
        logic = MOSMOSSegmentLogic()
        segNode, attention = logic.segment(volumeNode, ["liver", "spleen"], model=modelPath, device="cpu",
                                           returnAttention=True)
        names = segmentation.segment_names(segNode)
        self.assertTrue(set(names) <= {"liver", "spleen"})
        for name in names:
            segment = segNode.GetSegmentation().GetSegment(segmentation.segment_id(segNode, name))
            np.testing.assert_allclose(segment.GetColor(), np.array(color_for(name)) / 255.0, atol=1e-6)
            entry = vtk.mutable("")
            self.assertTrue(segment.GetTag(segment.GetTerminologyEntryTagName(), entry))
            self.assertEqual(terminology.resolved_label(slicer.modules.terminologies.logic(), entry.get()), name)
            mask = segmentation.export_segment_array(segNode, name, volumeNode)
            self.assertEqual(mask.shape, tuple(reversed(volumeNode.GetImageData().GetDimensions())))
        self.assertEqual(sorted(attention), ["liver", "spleen"])
        for node in attention.values():
            values, ras = volumes.array_from_volume(node)
            self.assertTrue(0.0 <= values.min() and values.max() <= 1.0)
            np.testing.assert_allclose(ras, volumes.ijk_to_ras(volumeNode))
        table = logic.lastOutputs.table_node
        self.assertEqual(table.GetNumberOfRows(), len(logic.lastOutputs.organs))
        for row in range(table.GetNumberOfRows()):
            self.assertIn(table.GetCellText(row, tables.COLUMNS.index("status")), tables.STATUS_COLORS)
        self.delayDisplay("Test passed")
