"""Data as it ships: ROCO folders of images with their reports (roco), segmentation datasets in the Decathlon /
BTCV layout (decathlon), the fine-tuning transforms (transforms), and the phantom generator behind the demo,
the study and the tests (phantoms)."""
