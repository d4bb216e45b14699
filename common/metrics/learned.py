"""Learned / no-reference metrics through pyiqa, loaded offline from local weight files.

pyiqa (the field's metric stack) is imported lazily: training and tests that need only PSNR/
SSIM never pay its import time. Weights never come from the network at run time; they are
looked up, in order, in ``weights_dir`` and in pyiqa's cache (``$TORCH_HOME/hub/pyiqa``).
``weights_dir`` is laid out like a torch hub dir:

    weights_dir/                  pyiqa checkpoints (LPIPS_v0.1_alex-df73285e.pth, ...), also
    weights_dir/pyiqa/              accepted one level down
    weights_dir/checkpoints/      torchvision backbones (alexnet-owt-7be5be79.pth, vgg16-397923af.pth)
    weights_dir/clip/             OpenAI CLIP (RN50.pt) for clipiqa

Deliberate changes to how pyiqa loads weights (hooks installed once, see
`_install_hooks`): (1) file names are resolved locally as above, with a one-line error naming
the missing file instead of a download attempt; (2) checkpoints are read with
``torch.load(weights_only=True)`` (pyiqa itself uses ``weights_only=False`` on files we do
not control); (3) timm backbones are built with ``pretrained=False`` (MANIQA, TOPIQ): their
weights are part of the metric's own checkpoint, which pyiqa then loads strictly; (4) torchvision
and CLIP files that are missing raise instead of being downloaded.
NIQE works with no download by converting basicsr's shipped ``niqe_pris_params.npz``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

# Our names -> (pyiqa name, what is pinned). Recorded in every evaluation JSON.
VARIANTS = {
    "lpips": ("lpips", "LPIPS v0.1, AlexNet backbone"),
    "dists": ("dists", "DISTS (VGG16)"),
    "niqe": ("niqe", "NIQE, YIQ luminance, pristine params"),
    "musiq": ("musiq", "MUSIQ KonIQ-10k checkpoint"),
    "maniqa": ("maniqa", "MANIQA KonIQ-10k checkpoint (VARSR / PURE scale)"),
    "maniqa-pipal": ("maniqa-pipal", "MANIQA PIPAL checkpoint (OSEDiff / NSARM scale)"),
    "clipiqa": ("clipiqa", "CLIP-IQA, CLIP RN50"),
    "topiq_nr": ("topiq_nr", "TOPIQ NR, KonIQ, ResNet50"),
    "fid": ("fid", "FID, Inception (pytorch-fid weights), folder vs folder"),
}
NIQE_MAT = "niqe_modelparameters.mat"  # pyiqa's default file name for NIQE's pristine model
_state = {"weights_dir": None, "installed": False}


class MetricWeightsError(FileNotFoundError):
    """A metric's weight file is not available offline; the message names the file and where to put it."""


def pyiqa_version() -> str:
    spec = importlib.util.find_spec("pyiqa")
    if spec is None:
        return "not installed"
    from importlib.metadata import version

    return version("pyiqa")


def _search_dirs() -> list[Path]:
    dirs = []
    wd = _state["weights_dir"]
    if wd:
        dirs += [Path(wd), Path(wd) / "pyiqa"]
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    dirs.append(Path(DEFAULT_CACHE_DIR))
    return dirs


def resolve_weight_file(url_or_path: str) -> str:
    """Local path for a pyiqa weight URL (by file name) or an existing path; else MetricWeightsError."""
    if os.path.isfile(url_or_path):
        return url_or_path
    name = os.path.basename(urlparse(url_or_path).path)
    for d in _search_dirs():
        if (d / name).is_file():
            return str(d / name)
    where = ", ".join(str(d) for d in _search_dirs())
    raise MetricWeightsError(
        f"metric weights {name} not found offline (looked in {where}); download {url_or_path} and put it in weights_dir"
    )


def _safe_load_pretrained_network(net, model_path, strict=True, weight_keys=None):
    from pyiqa.archs.arch_util import clean_state_dict

    path = resolve_weight_file(model_path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file, not a pickle traceback
        raise MetricWeightsError(f"cannot load {path} with weights_only=True ({type(e).__name__}: {e})") from None
    if weight_keys is not None:
        sd = sd[weight_keys]
    net.load_state_dict(clean_state_dict(sd), strict=strict)


def _local_load_file_from_url(url, model_dir=None, progress=True, file_name=None):
    return resolve_weight_file(file_name or url)


def _timm_no_download(orig):
    def create_model(*args, **kwargs):
        kwargs["pretrained"] = False
        return orig(*args, **kwargs)

    return create_model


def _install_hooks() -> None:
    """Point pyiqa's loaders at ours, in pyiqa's helper modules and every arch module that
    imported them by name (modules imported later get ours too, since we patch the source)."""
    if _state["installed"]:
        return
    import pyiqa.archs.arch_util as au
    import pyiqa.utils.download_util as du

    originals = {"load_file_from_url": du.load_file_from_url, "load_pretrained_network": au.load_pretrained_network}
    ours = {"load_file_from_url": _local_load_file_from_url, "load_pretrained_network": _safe_load_pretrained_network}
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("pyiqa") and mod is not None:
            for attr, orig in originals.items():
                if getattr(mod, attr, None) is orig:
                    setattr(mod, attr, ours[attr])
    _state["installed"] = True


def _torchvision_local_only(orig):
    # torchvision would download a missing backbone (and hang or fail deep inside urllib on an
    # offline node); fail at once with the file name and the folder it belongs in instead.
    def load_state_dict_from_url(url, model_dir=None, *args, **kwargs):
        folder = Path(model_dir) if model_dir else Path(torch.hub.get_dir()) / "checkpoints"
        name = kwargs.get("file_name") or os.path.basename(urlparse(url).path)
        if not (folder / name).is_file():
            raise MetricWeightsError(
                f"backbone weights {name} not found offline in {folder}; download {url} there "
                "(or into weights_dir/checkpoints)"
            )
        return orig(url, model_dir, *args, **kwargs)

    return load_state_dict_from_url


def _clip_local_only(orig):
    # pyiqa's CLIP loader re-downloads on a missing file or a checksum mismatch; offline we
    # want the file name and the folder instead.
    def _download(url, root):
        target = Path(root) / os.path.basename(url)
        if not target.is_file():
            raise MetricWeightsError(
                f"CLIP weights {target.name} not found offline in {root}; download {url} there "
                "(or into weights_dir/clip)"
            )
        return orig(url, root)

    return _download


@contextlib.contextmanager
def _offline_context(weights_dir):
    """Weights dir for pyiqa/torchvision/CLIP lookups and no timm downloads, during construction."""
    import timm

    prev_dir, prev_hub, prev_timm = _state["weights_dir"], torch.hub.get_dir(), timm.create_model
    _state["weights_dir"] = str(weights_dir) if weights_dir else None
    if weights_dir:
        torch.hub.set_dir(str(weights_dir))  # torchvision -> weights_dir/checkpoints, CLIP -> weights_dir/clip
    import pyiqa.archs.clip_model as clip_model
    import torchvision.models._api as tv_api

    prev_tv, prev_clip = tv_api.load_state_dict_from_url, clip_model._download
    timm.create_model = _timm_no_download(prev_timm)
    tv_api.load_state_dict_from_url = _torchvision_local_only(prev_tv)
    clip_model._download = _clip_local_only(prev_clip)
    try:
        yield
    finally:
        timm.create_model = prev_timm
        tv_api.load_state_dict_from_url = prev_tv
        clip_model._download = prev_clip
        torch.hub.set_dir(prev_hub)
        _state["weights_dir"] = prev_dir


def _basicsr_niqe_npz() -> Path:
    # Locate the file without importing basicsr (7 s, and it needs the compat shim).
    spec = importlib.util.find_spec("basicsr")
    if spec is None or not spec.submodule_search_locations:
        raise MetricWeightsError("basicsr is not installed: cannot build NIQE params offline")
    path = Path(list(spec.submodule_search_locations)[0]) / "metrics" / "niqe_pris_params.npz"
    if not path.is_file():
        raise MetricWeightsError(f"basicsr's NIQE params not found at {path}")
    return path


def niqe_params_mat(out_dir) -> Path:
    """Convert basicsr's ``niqe_pris_params.npz`` (mu (1,36), cov (36,36)) into the .mat pyiqa's
    NIQE reads (keys ``mu_prisparam``, ``cov_prisparam``); written once, atomically."""
    import scipy.io

    out = Path(out_dir) / "niqe_pris_params_from_basicsr.mat"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with np.load(_basicsr_niqe_npz()) as p:
        mats = {
            "mu_prisparam": np.asarray(p["mu_pris_param"], np.float64),
            "cov_prisparam": np.asarray(p["cov_pris_param"], np.float64),
        }
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:  # file object: savemat would append ".mat" to a bare tmp name
        scipy.io.savemat(f, mats)
    os.replace(tmp, out)
    return out


def _niqe_kwargs(weights_dir) -> tuple[dict, str]:
    with contextlib.suppress(MetricWeightsError):  # a real pyiqa .mat wins when present
        return {"pretrained_model_path": resolve_weight_file(NIQE_MAT)}, f"pyiqa {NIQE_MAT}"
    cache = (
        Path(weights_dir) if weights_dir else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "arsr"
    )
    return {"pretrained_model_path": str(niqe_params_mat(cache))}, "basicsr niqe_pris_params.npz (converted)"


def create_pyiqa_metric(name: str, device="cpu", weights_dir=None, **kwargs):
    """``(pyiqa InferenceModel, variant description)`` for one of VARIANTS (or any pyiqa name)."""
    try:
        import pyiqa
    except ImportError as e:
        raise ImportError(f"metric {name!r} needs pyiqa ({e})") from None
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    pyiqa_name, desc = VARIANTS.get(name, (name, f"pyiqa {name} (default options)"))
    if pyiqa_name not in DEFAULT_CONFIGS:
        raise ValueError(f"unknown metric {name!r} (not one of ours, not a pyiqa metric)")
    _install_hooks()
    # Import the arch module now so the hooks reach it before the network is built.
    importlib.import_module("pyiqa.archs")
    with _offline_context(weights_dir):
        if pyiqa_name == "niqe" and "pretrained_model_path" not in kwargs:
            extra, src = _niqe_kwargs(weights_dir)
            kwargs.update(extra)
            desc = f"{desc} ({src})"
        metric = pyiqa.create_metric(pyiqa_name, device=torch.device(device), **kwargs)
    return metric, desc
