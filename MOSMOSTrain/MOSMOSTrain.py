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

from mosmos.mrml import models
from MOSMOSTrainLib import folders, job
from MOSMOSTrainLib.settings import (ARCHITECTURES, BACKBONES, DEVICES, FINETUNE_DEFAULTS, INITIALIZATIONS,
                                     PRETRAIN_DEFAULTS, STAGES, TrainingSettings)

#
# MOSMOSTrain
#


class MOSMOSTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MOSMOS Train")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MOSMOS developers"]
        self.parent.helpText = _("""
Train MOSMOS models on your own data. <b>Pre-train</b> CLIP encoders on a local copy of ROCO (radiology images
with their reports), then <b>fine-tune</b> them for segmentation on a labelled dataset in the Medical Segmentation
Decathlon layout (dataset.json, e.g. BTCV). "Check folders" reports what the folders hold before anything starts.
Runs can be stopped and resumed from their last checkpoint; losses and validation results are plotted as they
arrive. A fine-tuned model is added to MOSMOSSegment's models; a pre-trained model stays in its output folder and
is offered to the fine-tuning stage. The same runs from a terminal: <code>mosmos pretrain</code> /
<code>mosmos finetune</code> (multi-GPU with torchrun).
""")
        self.parent.acknowledgementText = _("""
Method: Tian et al., "MOSMOS: Multi-organ segmentation facilitated by medical report supervision"
(arXiv 2409.02418). ROCO: Pelka et al., "Radiology Objects in COntext (ROCO)" (2018).
""")


#
# Parameter node
#


@parameterNodeWrapper
class MOSMOSTrainParameterNode:
    stage: Annotated[str, Choice(list(STAGES))] = "pretrain"
    outputFolder: Path
    backbone: Annotated[str, Choice(list(BACKBONES))] = TrainingSettings.backbone
    device: Annotated[str, Choice(list(DEVICES))] = TrainingSettings.device
    # Pre-training (the core's defaults, the paper's: mosmos.train.config)
    rocoFolder: Path
    clipWeights: str = "openai"
    pretrainEpochs: Annotated[int, WithinRange(1, 100000)] = PRETRAIN_DEFAULTS["epochs"]
    pretrainBatchSize: Annotated[int, WithinRange(1, 4096)] = PRETRAIN_DEFAULTS["batch_size"]
    pretrainLearningRate: Annotated[float, WithinRange(0.0, 1.0)] = PRETRAIN_DEFAULTS["lr"]
    # Fine-tuning (the same)
    datasetFolder: Path
    pretrainedModel: Path
    architecture: Annotated[str, Choice(list(ARCHITECTURES))] = TrainingSettings.architecture
    initialization: Annotated[str, Choice(list(INITIALIZATIONS))] = TrainingSettings.init
    finetuneEpochs: Annotated[int, WithinRange(1, 100000)] = FINETUNE_DEFAULTS["epochs"]
    finetuneBatchSize: Annotated[int, WithinRange(1, 256)] = FINETUNE_DEFAULTS["batch_size"]
    finetuneLearningRate: Annotated[float, WithinRange(0.0, 1.0)] = FINETUNE_DEFAULTS["lr"]
    lambdaPta: Annotated[float, WithinRange(0.0, 10.0)] = FINETUNE_DEFAULTS["lambda_pta"]
    labelRatio: Annotated[float, WithinRange(0.01, 1.0)] = FINETUNE_DEFAULTS["label_ratio"]
    # Advanced
    workers: Annotated[int, WithinRange(0, 64)] = TrainingSettings.workers
    checkpointEvery: Annotated[int, WithinRange(1, 10000000)] = TrainingSettings.checkpoint_every
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
        self._check = None  # the folder check running in the background, if any
        self._afterCheck = None  # what follows the check: None (report only), or (settings, resume)
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
        if self._check is not None:
            self._check.cancel()
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
        busy = running or self._check is not None
        ready = bool(p and folders.given(p.outputFolder))
        self.ui.startButton.enabled = ready and not busy
        self.ui.checkFoldersButton.enabled = bool(p) and not busy
        self.ui.stopButton.enabled = busy
        self.ui.resumeButton.enabled = (ready and not busy
                                        and (folders.given(p.outputFolder) / folders.CHECKPOINT_NAME).is_file())
        self.ui.showCurvesButton.enabled = self._job is not None

    def _log(self, text) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    # Folder checks: in a background process (a real ROCO folder or dataset takes minutes to read)

    def onCheckFolders(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot check the folders."), waitCursor=True):
            self._startCheck(None)

    def _startCheck(self, afterCheck) -> None:
        self._check = self.logic.folderCheck(self._parameterNode).start()
        self._afterCheck = afterCheck
        self.ui.progressBar.setRange(0, 0)
        self.ui.statusLabel.text = _("Checking the folders...")
        self._updateGui()
        self._timer.start()

    def _pollCheck(self) -> None:
        check = self._check
        for event in check.poll():
            if event.get("event") == "progress" and event.get("total"):
                self.ui.progressBar.setRange(0, int(event["total"]))
                self.ui.progressBar.setValue(int(event["done"]))
        if not check.done:
            return
        self._check, afterCheck, self._afterCheck = None, self._afterCheck, None
        self._timer.stop()
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.setValue(0)
        for report in check.reports:
            self._log(report.text)
        problems = [p for r in check.reports for p in r.problems]
        if check.error:
            self.ui.statusLabel.text = check.error
            if afterCheck is not None and not check.process.cancelled:
                slicer.util.errorDisplay(_("Training cannot start: {error}").format(error=check.error))
            return
        if afterCheck is None:
            self.ui.statusLabel.text = (_("Folders ready.") if not problems else
                                        _("{count} problem(s) found: see the log below.").format(count=len(problems)))
            return
        if problems:
            self.ui.statusLabel.text = _("Training cannot start: see the log below.")
            slicer.util.errorDisplay(_("Training cannot start:") + "\n" + "\n".join(problems))
            return
        settings, resume = afterCheck
        output = next(r for r in check.reports if r.kind == "output")
        if not resume and output.summary.get("checkpoint") and not slicer.util.confirmOkCancelDisplay(
                _("{folder} holds a run that can be resumed. Start a new run and replace it?").format(
                    folder=output.folder)):
            self.ui.statusLabel.text = _("Not started.")
            return
        self._launch(settings, resume)

    # Running

    def onStart(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Training cannot start."), waitCursor=True):
            self._startCheck((self._validSettings(), False))

    def onResume(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Training cannot resume."), waitCursor=True):
            self._startCheck((self._validSettings(), True))

    def _validSettings(self) -> TrainingSettings:
        settings = self.logic.settings(self._parameterNode)
        settings.validate()
        return settings

    def _launch(self, settings: TrainingSettings, resume: bool) -> None:
        with slicer.util.WaitCursor():
            sameRun = self._job is not None and resume and self._job.settings.out == settings.out
            if not sameRun:
                self._job = job.TrainingJob(settings, modelsFolder=self.logic.modelsFolder())
            self._job.start(resume=resume)
        self._log(" ".join(self._job.process.argv))
        self.ui.progressBar.setRange(0, 0)
        self.ui.statusLabel.text = self._job.statusText()
        self._updateGui()
        self.showCurves()
        self._timer.start()

    def onStop(self) -> None:
        # Returns at once: the process tree is stopped in a thread and the timer sees its exit.
        with slicer.util.tryWithErrorDisplay(_("Cannot stop.")):
            if self._check is not None:
                self._check.cancel(wait=False)
            elif self._job is not None:
                self._job.stop(wait=False)
            self.ui.statusLabel.text = _("Stopping...")

    def onPoll(self) -> None:
        # A timer slot: an error stops the timer (one dialog, not one every half second).
        try:
            if self._check is not None:
                self._pollCheck()
            elif self._job is not None:
                self._pollJob()
        except Exception as e:
            self._timer.stop()
            self._check = None
            logging.exception("MOSMOS training")
            slicer.util.errorDisplay(_("Training: {error}").format(error=e))
        self._updateGui()

    def _pollJob(self) -> None:
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

    def _finish(self, run) -> None:
        if run.state == job.FINISHED and run.settings.stage == "pretrain":
            # The next stage starts from this model. Through the logic: the widget's parameter node is None
            # after a scene close while the module was hidden.
            self.logic.getParameterNode().pretrainedModel = run.modelPath
            self._log(_("Pre-trained model set as the fine-tuning stage's starting point: {path}").format(
                path=run.modelPath))
        elif run.state == job.FAILED:
            slicer.util.errorDisplay(_("Training failed: {error}").format(error=run.error))
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
    def _checkArguments(p) -> dict:
        return {"stage": p.stage, "output": p.outputFolder, "roco": p.rocoFolder, "batch_size": p.pretrainBatchSize,
                "dataset": p.datasetFolder, "label_ratio": p.labelRatio, "architecture": p.architecture}

    def checkFolders(self, p) -> list:
        """Reports on the output folder and the stage's input folder. Blocking (minutes on a real ROCO folder):
        a GUI uses folderCheck()."""
        return folders.check_stage(**self._checkArguments(p))

    def folderCheck(self, p) -> folders.FolderCheck:
        """The same check for a background process: call start(), then poll()."""
        return folders.FolderCheck(**self._checkArguments(p))

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

        from mosmos.mrml import selftest

        base = Path(slicer.app.temporaryPath) / "MOSMOSTrainTest"
        shutil.rmtree(base, ignore_errors=True)
        self.delayDisplay("Writing a phantom ROCO folder and a phantom dataset")
        roco, dataset = selftest.training_folders(base)

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
        p.stage, p.datasetFolder, p.pretrainedModel = "finetune", dataset, run.modelPath
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
