"""Batched Real-ESRGAN second-order degradation on any device (spec common.md §1.3).

``Degrader(cfg)(gt, kernels, generator)`` turns a batch of GT images in [0, 1] into 8-bit LQ
images and returns, per image, a JSON-able dict of every random choice it made.  The call is
split in two so that a recorded parameter list reproduces the output exactly:

* :meth:`Degrader.sample_params` draws all random choices (per sample by default; per batch,
  as the official ``feed_data``, under ``per_batch_compat``) from one CPU ``torch.Generator``,
  including an integer ``noise_seed`` per image;
* :meth:`Degrader.apply` is a pure function of (gt, kernels, params): noise fields come from
  per-image generators seeded by ``noise_seed``, so batching does not change an image's result.

Images whose random resizes give them the same size are processed together (grouped conv,
batched JPEG), the rest one group per size.

Per-image ``params`` layout (all JSON-able): ``preset``, ``scale``, ``usm_gt``,
``per_batch_compat``, ``noise_seed``; ``kernel1`` / ``kernel2`` / ``sinc`` (from the sampler:
``family``, ``size``, ``sigma_x``, ``sigma_y``, ``theta``, ``beta``, ``omega_c``); ``stage1`` and
``stage2`` (``resize`` up|down|keep, ``resize_scale``, ``resize_mode``, ``noise``
gaussian|poisson, ``noise_sigma`` (8-bit units) or ``poisson_scale``, ``gray_noise``, ``size``
[h, w] after the resize; stage1 also ``jpeg_quality``, stage2 also ``blur``); ``final``
(``order`` resize_sinc_jpeg|jpeg_resize_sinc, ``resize_mode``, ``jpeg_quality``);
``resize_back_mode`` (None unless cfg.resize_back).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import ops
from .kernels import sample_kernels
from .presets import DegradationConfig

# Column of each per-image uniform draw. Fixed so a seed means the same thing across versions.
_U = {
    name: i
    for i, name in enumerate(
        (
            "updown1",
            "scale1",
            "mode1",
            "noise1",
            "amount1",
            "gray1",
            "jpeg1",
            "blur2",
            "updown2",
            "scale2",
            "mode2",
            "noise2",
            "amount2",
            "gray2",
            "order",
            "mode_final",
            "jpeg2",
            "mode_back",
        )
    )
}
# Choices the official batched code draws once per batch (spec §1.3 "randomness granularity").
_PER_BATCH = (
    "updown1",
    "scale1",
    "mode1",
    "noise1",
    "blur2",
    "updown2",
    "scale2",
    "mode2",
    "noise2",
    "order",
    "mode_final",
)
ORDERS = ("resize_sinc_jpeg", "jpeg_resize_sinc")


@dataclass
class DegradationResult:
    """Output of :class:`Degrader`: tensors on the input's device, params one dict per image."""

    gt: torch.Tensor  # (B,3,H,W): USM-sharpened if cfg.usm_gt, else the input
    lq: torch.Tensor  # (B,3,H/s,W/s) in [0,1], multiples of 1/255
    lq_up: torch.Tensor | None  # (B,3,H,W) resized back with a random mode, then quantised (cfg.resize_back)
    params: list[dict]


def _uniform(u: float, rng: Sequence[float]) -> float:
    return float(rng[0] + u * (rng[1] - rng[0]))


def _pick(u: float, options: Sequence[str]) -> str:
    return str(options[min(int(u * len(options)), len(options) - 1)])


def _map_groups(xs: list[torch.Tensor], key: Callable[[int], tuple], fn) -> list[torch.Tensor]:
    """Apply ``fn(batch, indices)`` to images grouped by (shape, key(i)); keeps list order."""
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault((tuple(x.shape),) + key(i), []).append(i)
    out: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
    for idx in groups.values():
        y = fn(torch.cat([xs[i] for i in idx]) if len(idx) > 1 else xs[idx[0]], idx)
        for j, i in enumerate(idx):
            out[i] = y[j : j + 1]
    return out


class Degrader:
    """Config-driven second-order degradation; see the module docstring."""

    def __init__(self, cfg: DegradationConfig):
        if not isinstance(cfg, DegradationConfig):  # a Hydra/OmegaConf node or a plain dict
            cfg = DegradationConfig.from_dict(cfg)
        cfg.validate()
        self.cfg = cfg

    # ------------------------------------------------------------------ random choices
    def _stage(self, u: np.ndarray, n: int) -> dict:
        c, sfx = self.cfg, ("" if n == 1 else "2")
        probs = np.asarray(getattr(c, "resize_prob" + sfx), dtype=np.float64)
        kind = ("up", "down", "keep")[min(int(np.searchsorted(np.cumsum(probs), u[_U[f"updown{n}"]], "right")), 2)]
        lo, hi = getattr(c, "resize_range" + sfx)
        us = u[_U[f"scale{n}"]]
        scale = {"up": _uniform(us, (1.0, hi)), "down": _uniform(us, (lo, 1.0)), "keep": 1.0}[kind]
        gaussian = bool(u[_U[f"noise{n}"]] < getattr(c, "gaussian_noise_prob" + sfx))
        amount = u[_U[f"amount{n}"]]
        return {
            "resize": kind,
            "resize_scale": scale,
            "resize_mode": _pick(u[_U[f"mode{n}"]], c.resize_modes),
            "noise": "gaussian" if gaussian else "poisson",
            "noise_sigma": _uniform(amount, getattr(c, "noise_range" + sfx)) if gaussian else None,
            "poisson_scale": None if gaussian else _uniform(amount, getattr(c, "poisson_scale_range" + sfx)),
            "gray_noise": bool(u[_U[f"gray{n}"]] < getattr(c, "gray_noise_prob" + sfx)),
        }

    def sample_params(
        self, batch: int, generator: torch.Generator | None = None, kernel_params: Sequence[dict] | None = None
    ) -> list[dict]:
        """Draw every random choice for ``batch`` images from ``generator`` (on any device)."""
        c = self.cfg
        if generator is None:  # convenience only: derive a seed from torch's global RNG
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        # The generator may live on the training device (e.g. keyed per step on CUDA): draw there,
        # read back once; the choices are host-side decisions.
        dev = generator.device
        u = torch.rand(batch, len(_U), generator=generator, dtype=torch.float64, device=dev).cpu().numpy()
        seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=dev).tolist()
        if c.per_batch_compat:
            cols = [_U[k] for k in _PER_BATCH]
            u[:, cols] = u[0, cols]
        params = []
        for i in range(batch):
            s1, s2 = self._stage(u[i], 1), self._stage(u[i], 2)
            s1["jpeg_quality"] = _uniform(u[i, _U["jpeg1"]], c.jpeg_range)
            s2 = {"blur": bool(u[i, _U["blur2"]] < c.second_blur_prob), **s2}
            p = {
                "preset": c.name,
                "scale": c.scale,
                "usm_gt": c.usm_gt,
                "per_batch_compat": c.per_batch_compat,
                "noise_seed": int(seeds[i]),
                "stage1": s1,
                "stage2": s2,
                "final": {
                    "order": ORDERS[0] if u[i, _U["order"]] < c.final_order_prob else ORDERS[1],
                    "resize_mode": _pick(u[i, _U["mode_final"]], c.resize_modes),
                    "jpeg_quality": _uniform(u[i, _U["jpeg2"]], c.jpeg_range2),
                },
                "resize_back_mode": _pick(u[i, _U["mode_back"]], c.resize_modes) if c.resize_back else None,
            }
            if kernel_params is not None:
                p.update(copy.deepcopy(dict(kernel_params[i])))
            params.append(p)
        return params

    # ------------------------------------------------------------------ application
    def __call__(self, gt: torch.Tensor, kernels: dict, generator: torch.Generator | None = None) -> DegradationResult:
        self._check(gt, kernels)
        params = self.sample_params(gt.shape[0], generator, kernels.get("params"))
        return self.apply(gt, kernels, params)

    @staticmethod
    def _check(gt: torch.Tensor, kernels: dict) -> None:
        if gt.dim() != 4 or gt.shape[1] != 3:
            raise ValueError(f"Degrader expects gt of shape (B,3,H,W), got {tuple(gt.shape)}")
        for key in ("kernel1", "kernel2", "sinc_kernel"):
            if key not in kernels or kernels[key].shape[0] != gt.shape[0]:
                raise ValueError(f"Degrader: kernels[{key!r}] missing or not one per image (batch {gt.shape[0]})")

    def _noise(self, xs: list[torch.Tensor], params: list[dict], stage: str, gens) -> list[torch.Tensor]:
        compat = self.cfg.per_batch_compat

        def fn(xb: torch.Tensor, idx: list[int]) -> torch.Tensor:
            out = xb.clone()
            for kind in ("gaussian", "poisson"):
                sel = [j for j, i in enumerate(idx) if params[i][stage]["noise"] == kind]
                if not sel:
                    continue
                ps = [params[idx[j]][stage] for j in sel]
                gray = [p["gray_noise"] for p in ps]
                g = [gens[idx[j]] for j in sel]
                if kind == "gaussian":
                    amount = torch.tensor([p["noise_sigma"] for p in ps])
                    n = ops.gaussian_noise(xb[sel], amount, gray, g, shared_gray=compat)
                else:
                    amount = torch.tensor([p["poisson_scale"] for p in ps])
                    n = ops.poisson_noise(xb[sel], amount, gray, g)
                out[sel] = xb[sel] + n
            return torch.clamp(out, 0, 1)

        # Compat mode mirrors one batched call, so the shared gray field spans the whole batch.
        return _map_groups(xs, lambda i: (), fn)

    def _jpeg(self, xs: list[torch.Tensor], q: list[float], key=lambda i: ()) -> list[torch.Tensor]:
        return _map_groups(xs, key, lambda xb, idx: ops.jpeg(torch.clamp(xb, 0, 1), torch.tensor([q[i] for i in idx])))

    def apply(self, gt: torch.Tensor, kernels: dict, params: list[dict]) -> DegradationResult:
        """Degrade ``gt`` (B,3,H,W) in [0,1] with given kernels and params (a pure function)."""
        c = self.cfg
        self._check(gt, kernels)
        b, _, h, w = gt.shape
        if len(params) != b:
            raise ValueError(f"Degrader.apply: {len(params)} param dicts for a batch of {b}")
        dev, s = gt.device, c.scale
        params = copy.deepcopy(params)
        gt = gt.float()
        if c.usm_gt:
            gt = ops.usm_sharp(gt, c.usm_weight, c.usm_radius, c.usm_threshold)
        k1, k2, ks = (kernels[k].to(dev, non_blocking=True) for k in ("kernel1", "kernel2", "sinc_kernel"))
        if c.per_batch_compat:  # one noise stream for the batch, as a single batched draw would be
            g = torch.Generator(device=dev).manual_seed(params[0]["noise_seed"])
            gens = [g] * b
        else:
            gens = [torch.Generator(device=dev).manual_seed(p["noise_seed"]) for p in params]
        p1 = [p["stage1"] for p in params]
        p2 = [p["stage2"] for p in params]
        pf = [p["final"] for p in params]

        # ---- first stage: blur (all images share the GT size: one grouped conv)
        xs = list(ops.filter2d(gt, k1).split(1))
        xs = _map_groups(
            xs,
            lambda i: (p1[i]["resize_scale"], p1[i]["resize_mode"]),
            lambda xb, idx: F.interpolate(xb, scale_factor=p1[idx[0]]["resize_scale"], mode=p1[idx[0]]["resize_mode"]),
        )
        for p, x in zip(p1, xs):
            p["size"] = list(x.shape[-2:])
        xs = self._noise(xs, params, "stage1", gens)
        xs = self._jpeg(xs, [p["jpeg_quality"] for p in p1])

        # ---- second stage
        xs = _map_groups(
            xs, lambda i: (p2[i]["blur"],), lambda xb, idx: ops.filter2d(xb, k2[idx]) if p2[idx[0]]["blur"] else xb
        )
        for p in p2:  # explicit size relative to the LQ size, computed as the official code does
            p["size"] = [int(h / s * p["resize_scale"]), int(w / s * p["resize_scale"])]
        xs = _map_groups(
            xs,
            lambda i: (tuple(p2[i]["size"]), p2[i]["resize_mode"]),
            lambda xb, idx: F.interpolate(xb, size=tuple(p2[idx[0]]["size"]), mode=p2[idx[0]]["resize_mode"]),
        )
        xs = self._noise(xs, params, "stage2", gens)

        # ---- final step: (resize -> sinc -> JPEG) or (JPEG -> resize -> sinc)
        lq_size = (h // s, w // s)

        def final(xb: torch.Tensor, idx: list[int]) -> torch.Tensor:
            mode, q = pf[idx[0]]["resize_mode"], torch.tensor([pf[i]["jpeg_quality"] for i in idx])
            if pf[idx[0]]["order"] == ORDERS[0]:
                xb = ops.filter2d(F.interpolate(xb, size=lq_size, mode=mode), ks[idx])
                return ops.jpeg(torch.clamp(xb, 0, 1), q)
            xb = ops.jpeg(torch.clamp(xb, 0, 1), q)
            return ops.filter2d(F.interpolate(xb, size=lq_size, mode=mode), ks[idx])

        xs = _map_groups(xs, lambda i: (pf[i]["order"], pf[i]["resize_mode"]), final)
        lq_f = torch.cat(xs)
        lq_up = None
        if c.resize_back:  # VARSR/OSEDiff: back to GT size first, quantise after the resize
            ups = _map_groups(
                list(lq_f.split(1)),
                lambda i: (params[i]["resize_back_mode"],),
                lambda xb, idx: F.interpolate(xb, size=(h, w), mode=params[idx[0]]["resize_back_mode"]),
            )
            lq_up = ops.quantize(torch.cat(ups))
        return DegradationResult(gt=gt, lq=ops.quantize(lq_f), lq_up=lq_up, params=params)


def degrade_image(gt: torch.Tensor, cfg: DegradationConfig, seed: int) -> DegradationResult:
    """Degrade one image (3,H,W); kernels and choices from ``seed``. Tensors come back unbatched."""
    if gt.dim() != 3:
        raise ValueError(f"degrade_image expects (3,H,W), got {tuple(gt.shape)}")
    kernels = sample_kernels(cfg, 1, np.random.default_rng(seed))
    res = Degrader(cfg)(gt[None], kernels, torch.Generator().manual_seed(seed))
    return DegradationResult(
        gt=res.gt[0], lq=res.lq[0], lq_up=None if res.lq_up is None else res.lq_up[0], params=res.params
    )
