"""`mosmos web`: the MOSMOSSegment workflow in a browser, on trame-slicer (Slicer's views and MRML scene
served by a Python process). With mosmos.mrml the only part of the core that imports slicer, vtk or trame;
installed with the ``web`` extra."""
