"""Real-ESRGAN second-order degradation: presets, CPU kernel sampling, batched on-device application.

Typical use: dataset workers call ``KernelSampler(cfg)(rng)`` per image and ``collate_kernels``
per batch; the training step calls ``Degrader(cfg)(gt, kernels, generator)`` on the device.
"""

from .kernels import KernelSampler, collate_kernels, sample_kernels
from .pipeline import DegradationResult, Degrader, degrade_image
from .presets import DegradationConfig, get_preset

__all__ = [
    "DegradationConfig",
    "get_preset",
    "KernelSampler",
    "collate_kernels",
    "sample_kernels",
    "Degrader",
    "DegradationResult",
    "degrade_image",
]
