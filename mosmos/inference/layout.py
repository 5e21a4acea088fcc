"""A 3D network's activations in channels-last order (NDHWC) for the CPU.

oneDNN's 3D convolutions read and write channels-last tensors as they are; given the default
order (NCDHW) each one reorders its input and output, which at a window's full resolution costs
more than the convolution: on one core of an AMD EPYC (AVX512-BF16), bf16, 96^3, a 1x1x1
convolution 32 -> 16 channels took 88 ms in NCDHW and 8 ms channels-last, a 3x3x3 one 260 ms and
128 ms. Torch's instance norm returns NCDHW whatever it is given (it runs as a batch norm of a
reshaped tensor), so every convolution after one would reorder again; an instance norm without
running statistics is a group norm with one channel per group, which keeps channels last.

One ViT-B MOSMOS-UNETR window (96^3, bf16 autocast, one thread, interleaved A/B in one process;
issue 18): 1.63 s -> 1.23 s of CPU time (0.76x).
"""

from __future__ import annotations

import torch
from torch import nn


def instance_norms_as_group_norms(network: nn.Module) -> int:
    """Replace each 3D instance norm without running statistics of a CPU network by the equal GroupNorm
    (one channel per group, the same eps and affine weights); returns how many were replaced."""
    replaced = 0
    for module in list(network.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.InstanceNorm3d) and not child.track_running_stats:
                norm = nn.GroupNorm(child.num_features, child.num_features, eps=child.eps, affine=child.affine)
                if child.affine:
                    with torch.no_grad():
                        norm.weight.copy_(child.weight)
                        norm.bias.copy_(child.bias)
                norm.train(child.training)
                setattr(module, name, norm)
                replaced += 1
    return replaced


def channels_last(network: nn.Module) -> nn.Module:
    """``network`` (3D, on the CPU) with its instance norms as group norms and its 5D weights channels-last, in
    place; feed it channels-last windows (``windows.contiguous(memory_format=torch.channels_last_3d)``)."""
    instance_norms_as_group_norms(network)
    return network.to(memory_format=torch.channels_last_3d)
