"""Qt-free logic of the MOSMOSSegment module: MRML nodes <-> the mosmos core's arrays, files and processes.
Runs in Slicer and, for tests and batch use, in plain Python with slicer-core."""
