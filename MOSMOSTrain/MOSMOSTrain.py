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
from slicer.util import VTKObservationMixin

from mosmos.mrml import deps, models
from MOSMOSTrainLib import folders, job
from MOSMOSTrainLib.settings import ARCHITECTURES, BACKBONES, INITIALIZATIONS, STAGES, TrainingSettings

#
# MOSMOSTrain
#


class MOSMOSTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MOSMOS Train"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["MOSMOS developers"]
        self.parent.helpText = """
Train MOSMOS models on your own data. <b>Pre-train</b> CLIP encoders on a local copy of ROCO (radiology images
with their reports), then <b>fine-tune</b> them for segmentation on a labelled dataset in the Medical Segmentation
Decathlon layout (dataset.json, e.g. BTCV). "Check folders" reports what the folders hold before anything starts.
Runs can be stopped and resumed from their last checkpoint; losses and validation results are plotted as they
arrive. A fine-tuned model is added to MOSMOSSegment's models; a pre-trained model stays in its output folder and
is offered to the fine-tuning stage. The same runs from a terminal: <code>mosmos pretrain</code> /
<code>mosmos finetune</code> (multi-GPU with torchrun).
"""
        self.parent.acknowledgementText = """
Method: Tian et al., "MOSMOS: Multi-organ segmentation facilitated by medical report supervision"
(arXiv 2409.02418). ROCO: Pelka et al., "Radiology Objects in COntext (ROCO)" (2018).
"""


#
# Parameter node
#


@parameterNodeWrapper
class MOSMOSTrainParameterNode:
    stage: Annotated[str, Choice(list(STAGES))] = "pretrain"
    outputFolder: Path
    backbone: Annotated[str, Choice(list(BACKBONES))] = "ViT-B-16"
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    # Pre-training (paper defaults)
    rocoFolder: Path
    clipWeights: str = "openai"
    pretrainEpochs: Annotated[int, WithinRange(1, 100000)] = 50
    pretrainBatchSize: Annotated[int, WithinRange(1, 4096)] = 64
    pretrainLearningRate: Annotated[float, WithinRange(0.0, 1.0)] = 1e-5
    # Fine-tuning (paper defaults)
    datasetFolder: Path
    pretrainedModel: Path
    architecture: Annotated[str, Choice(list(ARCHITECTURES))] = "unetr"
    initialization: Annotated[str, Choice(list(INITIALIZATIONS))] = "mosmos"
    finetuneEpochs: Annotated[int, WithinRange(1, 100000)] = 1000
    finetuneBatchSize: Annotated[int, WithinRange(1, 256)] = 1
    finetuneLearningRate: Annotated[float, WithinRange(0.0, 1.0)] = 1e-4
    lambdaPta: Annotated[float, WithinRange(0.0, 10.0)] = 0.8
    labelRatio: Annotated[float, WithinRange(0.01, 1.0)] = 1.0
    # Advanced
    workers: Annotated[int, WithinRange(0, 64)] = 4
    checkpointEvery: Annotated[int, WithinRange(1, 10000000)] = 500
    maxSteps: Annotated[int, WithinRange(0, 100000000)] = 0


#
# MOSMOSTrainWidget
#


class MOSMOSTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MOSMOSTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MOSMOSTrainLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(500)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.checkFoldersButton.connect("clicked(bool)", self.onCheckFolders)
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", self.onResume)
        self.ui.showCurvesButton.connect("clicked(bool)", self.showCurves)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        # A run must not outlive Slicer: nothing would read its output any more.
        if self._job is not None:
            self._job.stop()
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets carry a "SlicerParameterName" property in the .ui file.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        p = self._parameterNode
        pretraining = not p or p.stage == "pretrain"
        self.ui.pretrainGroupBox.visible = pretraining
        self.ui.finetuneGroupBox.visible = not pretraining
        running = self._job is not None and self._job.running
        ready = bool(p and folders.given(p.outputFolder))
        self.ui.startButton.enabled = ready and not running
        self.ui.checkFoldersButton.enabled = bool(p) and not running
        self.ui.stopButton.enabled = running
        self.ui.resumeButton.enabled = (ready and not running
                                        and (folders.given(p.outputFolder) / folders.CHECKPOINT_NAME).is_file())
        self.ui.showCurvesButton.enabled = self._job is not None

    def _log(self, text) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    # Folder checks

    def onCheckFolders(self) -> None:
        with slicer.util.tryWithErrorDisplay("Cannot check the folders.", waitCursor=True):
            reports = self.logic.checkFolders(self._parameterNode)
            for report in reports:
                self._log(report.text)
            problems = sum(len(r.problems) for r in reports)
            self.ui.statusLabel.text = ("Folders ready." if not problems
                                        else f"{problems} problem(s) found: see the log below.")

    def _checkBeforeStart(self, resume: bool) -> bool:
        with slicer.util.WaitCursor():
            reports = self.logic.checkFolders(self._parameterNode)
        for report in reports:
            self._log(report.text)
        blocking = [p for r in reports for p in r.problems]
        if blocking:
            slicer.util.errorDisplay("Training cannot start:\n" + "\n".join(blocking))
            return False
        output = next(r for r in reports if r.kind == "output")
        if not resume and output.summary.get("checkpoint"):
            return slicer.util.confirmOkCancelDisplay(
                f"{output.folder} holds a run that can be resumed. Start a new run and replace it?")
        return True

    # Running

    def onStart(self) -> None:
        self._launch(resume=False)

    def onResume(self) -> None:
        self._launch(resume=True)

    def _launch(self, resume: bool) -> None:
        try:
            settings = self.logic.settings(self._parameterNode)
            settings.validate()
        except Exception as e:
            slicer.util.errorDisplay(f"Training cannot start: {e}")
            return
        if not self._checkBeforeStart(resume):
            return
        try:
            with slicer.util.WaitCursor():
                deps.ensure_dependencies()
                sameRun = self._job is not None and resume and self._job.settings.out == settings.out
                if not sameRun:
                    self._job = job.TrainingJob(settings, modelsFolder=self.logic.modelsFolder())
                self._job.start(resume=resume)
        except Exception as e:
            slicer.util.errorDisplay(f"Training could not start: {e}")
            logging.exception("MOSMOS training could not start")
            return
        self._log(" ".join(self._job.process.argv))
        self.ui.progressBar.setRange(0, 0)
        self.ui.statusLabel.text = self._job.statusText()
        self._updateGui()
        self.showCurves()
        self._timer.start()

    def onStop(self) -> None:
        if self._job is None:
            return
        with slicer.util.WaitCursor():
            self._job.stop()
        self.onPoll()

    def onPoll(self) -> None:
        run = self._job
        for event in run.poll():
            line = job.describe(event)
            if line:
                self._log(line)
        if run.totalSteps:
            self.ui.progressBar.setRange(0, int(run.totalSteps))
            self.ui.progressBar.setValue(int(run.step))
        self.ui.statusLabel.text = run.statusText()
        if not run.running:
            self._timer.stop()
            self._finish(run)
        self._updateGui()

    def _finish(self, run) -> None:
        if run.state == job.FINISHED and run.settings.stage == "pretrain":
            # The next stage starts from this model.
            self._parameterNode.pretrainedModel = run.modelPath
            self._log(f"Pre-trained model set as the fine-tuning stage's starting point: {run.modelPath}")
        elif run.state == job.FAILED:
            slicer.util.errorDisplay(f"Training failed: {run.error}")
        if run.error and run.state == job.FINISHED:
            slicer.util.errorDisplay(run.error)

    def showCurves(self, *unused) -> None:
        if self._job is None or slicer.app.commandOptions().noMainWindow or slicer.app.layoutManager() is None:
            return
        slicer.modules.plots.logic().ShowChartInLayout(self._job.curves.chart)


#
# MOSMOSTrainLogic
#


class MOSMOSTrainLogic(ScriptedLoadableModuleLogic):
    """Train from Python without the GUI:

    logic = MOSMOSTrainLogic()
    run = logic.train(TrainingSettings("pretrain", out="~/runs/roco", roco="~/data/roco", backbone="RN50"))
    """

    def getParameterNode(self):
        return MOSMOSTrainParameterNode(super().getParameterNode())

    @staticmethod
    def settings(p) -> TrainingSettings:
        if p.stage == "pretrain":
            return TrainingSettings(
                "pretrain", out=p.outputFolder, roco=p.rocoFolder, backbone=p.backbone, weights=p.clipWeights,
                epochs=p.pretrainEpochs, batch_size=p.pretrainBatchSize, lr=p.pretrainLearningRate, device=p.device,
                workers=p.workers, checkpoint_every=p.checkpointEvery, max_steps=p.maxSteps or None)
        return TrainingSettings(
            "finetune", out=p.outputFolder, dataset=p.datasetFolder, pretrained=p.pretrainedModel,
            backbone=p.backbone, architecture=p.architecture, init=p.initialization, epochs=p.finetuneEpochs,
            batch_size=p.finetuneBatchSize, lr=p.finetuneLearningRate, lambda_pta=p.lambdaPta,
            label_ratio=p.labelRatio, device=p.device, workers=p.workers, checkpoint_every=p.checkpointEvery,
            max_steps=p.maxSteps or None)

    @staticmethod
    def checkFolders(p) -> list:
        """Reports on the output folder and the stage's input folder."""
        reports = [folders.check_output(p.outputFolder, p.stage)]
        if p.stage == "pretrain":
            reports.append(folders.check_roco(p.rocoFolder, batch_size=p.pretrainBatchSize))
        else:
            reports.append(folders.check_dataset(p.datasetFolder, p.labelRatio, p.architecture))
        return reports

    @staticmethod
    def modelsFolder() -> Path:
        """MOSMOSSegment's models folder, where a fine-tuned model goes so that MOSMOSSegment lists it."""
        try:
            from MOSMOSSegment import MOSMOSSegmentLogic
        except ImportError:  # MOSMOSSegment not loaded: the folder it would use
            return models.default_models_dir()
        return MOSMOSSegmentLogic().getParameterNode().modelsFolder

    def train(self, settings: TrainingSettings, resume: bool = False, onEvent=None, timeout=None):
        """Blocking: run to the end and return the TrainingJob (``state``, ``curves``, ``modelPath``,
        ``registered``). Raises MosmosError with the command's message when the run fails."""
        from mosmos.errors import MosmosError

        deps.ensure_dependencies(askConfirmation=not slicer.app.commandOptions().testingEnabled)
        run = job.TrainingJob(settings, modelsFolder=self.modelsFolder()).start(resume=resume)
        run.wait(timeout=timeout, onEvent=onEvent)
        if run.running:
            run.stop()
            raise MosmosError(f"{settings.stage}: still running after {timeout} s; stopped")
        if run.state == job.FAILED:
            raise MosmosError(run.error)
        return run


#
# MOSMOSTrainTest
#


class MOSMOSTrainTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PretrainStopResumeFinetune()

    def test_PretrainStopResumeFinetune(self):
        import shutil

        from mosmos.data.phantoms import write_decathlon_dataset, write_roco_folder

        base = Path(slicer.app.temporaryPath) / "MOSMOSTrainTest"
        shutil.rmtree(base, ignore_errors=True)
        self.delayDisplay("Writing a phantom ROCO folder and a phantom dataset")
        roco = write_roco_folder(base / "roco", 64, seed=0)
        write_decathlon_dataset(base / "dataset", 2, 1, seed=0, shape=(32, 32, 16))

        logic = MOSMOSTrainLogic()
        p = logic.getParameterNode()
        p.rocoFolder, p.outputFolder, p.pretrainBatchSize = roco, base / "pretrain", 16
        reports = logic.checkFolders(p)
        self.assertTrue(all(r.ok for r in reports), "\n".join(r.text for r in reports))
        self.assertEqual(reports[1].summary["train_pairs"], 51)

        self.delayDisplay("Pre-training (tiny model), stopped at the first checkpoint")
        settings = logic.settings(p)
        settings.backbone, settings.weights, settings.epochs, settings.workers = "tiny-vit", "", 2, 0
        settings.checkpoint_every, settings.log_every, settings.device = 2, 1, "cpu"
        deps.ensure_dependencies(askConfirmation=False)
        run = job.TrainingJob(settings, modelsFolder=logic.modelsFolder()).start()

        def stopAtCheckpoint(event):
            if event["event"] == "checkpoint":
                run.stop()

        self.assertEqual(run.wait(timeout=120, onEvent=stopAtCheckpoint), job.STOPPED)
        self.assertTrue(run.canResume)

        self.delayDisplay("Resuming to the end")
        run.resume()
        self.assertEqual(run.wait(timeout=120), job.FINISHED, run.statusText())
        self.assertEqual(run.step, 6)
        steps = slicer.util.arrayFromTableColumn(run.curves.stepTable, "step").tolist()
        self.assertEqual(steps, [1, 2, 3, 4, 5, 6])
        self.assertEqual(run.curves.chart.GetNumberOfPlotSeriesNodes(), 5)
        self.assertTrue(run.modelPath.is_file())

        self.delayDisplay("Fine-tuning from the pre-trained model (one step)")
        p.stage, p.datasetFolder, p.pretrainedModel = "finetune", base / "dataset", run.modelPath
        p.outputFolder = base / "MOSMOSTrainTest-phantom"
        self.assertTrue(all(r.ok for r in logic.checkFolders(p)))
        settings = logic.settings(p)
        settings.backbone, settings.workers, settings.device = "tiny-vit", 0, "cpu"
        settings.epochs, settings.max_steps, settings.roi_size, settings.num_samples = 1, 1, (32, 32, 32), 1
        finetuned = logic.train(settings, timeout=300)
        self.assertEqual(finetuned.state, job.FINISHED)
        self.assertIsNotNone(finetuned.registered)
        listed = [m.path for m in models.list_models(logic.modelsFolder())]
        self.assertIn(finetuned.registered.path, listed)
        finetuned.registered.path.unlink()  # the user's models folder: leave it as it was
        self.delayDisplay("Test passed")
