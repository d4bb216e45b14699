"""The one place in the repository that imports basicsr.

basicsr 1.4.2 (the latest release) imports
``torchvision.transforms.functional_tensor.rgb_to_grayscale`` from ``basicsr/data/degradations.py``,
a private module torchvision removed in 0.17; because ``basicsr/__init__`` imports every
sub-package, *any* ``import basicsr.*`` then fails.  We register a stand-in module exposing
torchvision's public ``rgb_to_grayscale`` under the old name before the first import.

Importing basicsr costs ~7 s (it imports all of its architectures), so nothing happens at
import time of this module: call :func:`get_basicsr` or one of the accessors below.  basicsr
is used as an *oracle* in tests (filter2D, USMSharp, DiffJPEG, noise, kernels, PSNR/SSIM,
NIQE), by metric code and for the Real-ESRGAN baseline's ``RRDBNet`` (``common.baseline``); our own
degradation pipeline does not depend on it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_SHIM_NAME = "torchvision.transforms.functional_tensor"


def _install_torchvision_shim() -> None:
    """Register the removed torchvision module name, pointing at the public function."""
    if _SHIM_NAME in sys.modules:
        return
    try:  # older torchvision still ships the real module: use it untouched
        importlib.import_module(_SHIM_NAME)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional as tvf

    shim = types.ModuleType(_SHIM_NAME)
    shim.__doc__ = "Stand-in for the torchvision module removed in 0.17 (installed by common.compat.basicsr)."
    shim.rgb_to_grayscale = tvf.rgb_to_grayscale
    sys.modules[_SHIM_NAME] = shim


def get_basicsr():
    """Import and return the ``basicsr`` package (installing the torchvision shim first)."""
    _install_torchvision_shim()
    try:
        return importlib.import_module("basicsr")
    except ImportError as exc:  # one clear line instead of a deep traceback
        raise ImportError(
            f"basicsr could not be imported ({exc}); install basicsr==1.4.2 with --no-build-isolation after torch"
        ) from None


def _submodule(name: str):
    get_basicsr()
    return importlib.import_module(f"basicsr.{name}")


def degradations():
    """``basicsr.data.degradations`` (kernels, noise, JPEG helpers)."""
    return _submodule("data.degradations")


def img_process_util():
    """``basicsr.utils.img_process_util`` (filter2D, usm_sharp, USMSharp)."""
    return _submodule("utils.img_process_util")


def diffjpeg():
    """``basicsr.utils.diffjpeg`` (DiffJPEG and its helpers)."""
    return _submodule("utils.diffjpeg")


def metrics():
    """``basicsr.metrics`` (calculate_psnr, calculate_ssim, calculate_niqe)."""
    return _submodule("metrics")


def rrdbnet_arch():
    """``basicsr.archs.rrdbnet_arch`` (RRDBNet, the Real-ESRGAN x4plus generator)."""
    return _submodule("archs.rrdbnet_arch")


def filter2D(img, kernel):  # noqa: N802 - basicsr's name
    return img_process_util().filter2D(img, kernel)


def USMSharp(*args: Any, **kwargs: Any):  # noqa: N802 - basicsr's name
    return img_process_util().USMSharp(*args, **kwargs)


def DiffJPEG(differentiable: bool = False):  # noqa: N802 - basicsr's name
    return diffjpeg().DiffJPEG(differentiable=differentiable)


def __getattr__(name: str):
    # `from common.compat.basicsr import basicsr` (the form the preamble names) imports lazily.
    if name == "basicsr":
        return get_basicsr()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
