"""mosmos.mrml: Qt-free logic on MRML nodes shared by the MOSMOSSegment module, its batch script and the
web app: MRML nodes <-> the mosmos core's arrays, files and processes. The one part of the core (with mosmos.web)
that imports slicer and vtk; runs in Slicer and in plain Python with slicer-core."""
