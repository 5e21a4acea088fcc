"""Qt-free logic of the MOSMOSTrain module: folder checks, `mosmos pretrain|finetune` in a background process,
its events as MRML table and plot nodes, and the finished model handed to MOSMOSSegment's models folder.
Runs in Slicer and, for tests and scripts, in plain Python with slicer-core."""
