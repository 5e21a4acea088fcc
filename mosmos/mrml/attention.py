"""Attention maps as scalar volumes: per organ the probability that it wins at the voxel (what
``mosmos segment --attention`` writes), shown with a perceptual colour map on a fixed 0..1 window and a
colour legend titled with that meaning, so that equal colours mean equal probabilities in every map."""

from __future__ import annotations

import numpy as np

from ..tags import attention_title
from .volumes import volume_from_array

# Shipped with Slicer as colour files; absent from a bare scene (slicer-core), where a table of the same
# look is made once per scene.
PREFERRED_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileViridis.txt")
FALLBACK_COLOR_NODE_NAME = "MOSMOS Inferno"
# Inferno (matplotlib's colour map, CC0) sampled at 0, 1/8, ..., 1; interpolated to 256 entries.
_INFERNO_ANCHORS = np.array([
    [0.0015, 0.0005, 0.0139], [0.1293, 0.0473, 0.2908], [0.3415, 0.0623, 0.4294],
    [0.5409, 0.1347, 0.4151], [0.7357, 0.2159, 0.3302], [0.8943, 0.3534, 0.1936],
    [0.9784, 0.5579, 0.0349], [0.9746, 0.7977, 0.2063], [0.9884, 0.9984, 0.6449]])


def attention_color_node(scene):
    for node_id in PREFERRED_COLOR_NODE_IDS:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            return node
    node = scene.GetFirstNodeByName(FALLBACK_COLOR_NODE_NAME)
    if node is not None:
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", FALLBACK_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    x = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
    t = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.interp(t, x, _INFERNO_ANCHORS[:, c]) for c in range(3)], axis=1)
    for i, (r, g, b) in enumerate(rgb):
        node.SetColor(i, f"{t[i]:.3f}", float(r), float(g), float(b), 1.0)
    return node


def attention_volume_node(scene, attention: np.ndarray, ijk_to_ras_matrix: np.ndarray, tag: str,
                          reference_volume_node=None, labelled: bool = True):
    """A float volume of one tag's attention (k, j, i, probabilities in [0, 1]), window 0..1; voxels
    below 5 % are transparent when shown as a foreground layer. Its colour legend (a display node of
    the volume) appears in the slice views that show the volume; ``labelled``: whether the model
    labels this organ (else an open-set tag, see tags.attention_title)."""
    node = volume_from_array(scene, np.clip(attention, 0.0, 1.0).astype(np.float32), ijk_to_ras_matrix,
                             f"{tag} attention")
    node.SetAttribute("MOSMOS.AttentionTag", tag)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(attention_color_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetThreshold(0.05, 1.0)
    display.ApplyThresholdOn()
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        # Slicer's Colors module registers it; a bare scene (slicer-core) has not.
        import slicer

        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode", f"{tag} attention legend")
    legend.SetAndObservePrimaryDisplayNode(display)
    legend.SetTitleText(attention_title(tag, labelled))
    legend.SetLabelFormat("%.1f")
    node.AddAndObserveDisplayNodeID(legend.GetID())
    if reference_volume_node is not None:
        from .segmentation import place_next_to
        place_next_to(node, reference_volume_node)
    return node
