"""Multi-scale residual vector quantizer of VAR/VARSR (spec varsr.md section 2.3-2.6).

Only the paths VARSR needs are implemented: encoding HR latents into per-scale indices plus the
continuous last-scale remainder `r_last`, building teacher-forcing inputs, and accumulating
sampled indices at inference, plus `forward_train` for tokenizer fine-tuning.  The last scale
is discrete *without* phi (HART-style) everywhere, including `forward_train`: the official
VAE-training path that still applies phi there is deliberately not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def phi_index_map(num_scales: int, num_phi: int = 4) -> list[int]:
    """Which shared phi conv each scale uses (the last scale uses none and is omitted).

    Official rule: ticks = linspace(1/(3n), 1 - 1/(3n), n), pick argmin |tick - si/(K-1)|.  It is
    computed in float64 numpy on purpose: si/(K-1) = 2/9 and 7/9 are exact ties in real arithmetic
    and only float64 rounding resolves them the way the released checkpoint was trained (1 and 3).
    """
    ticks = np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi)
    denom = max(num_scales - 1, 1)
    return [int(np.argmin(np.abs(ticks - si / denom))) for si in range(num_scales - 1)]


class Phi(nn.Conv2d):
    """phi(h) = (1 - q) h + q conv3x3(h); a Conv2d subclass so its keys are `qresi_ls.i.weight`."""

    def __init__(self, channels: int, quant_resi: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.resi_ratio) + super().forward(h).mul_(self.resi_ratio)


class PhiShared(nn.Module):
    """Holds the shared phi convs under the official name `qresi_ls`."""

    def __init__(self, channels: int, num: int, quant_resi: float):
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(channels, quant_resi) for _ in range(num)])


class MultiScaleQuantizer(nn.Module):
    def __init__(
        self, vocab_size: int, cvae: int, patch_nums: Sequence[int], share_quant_resi: int = 4, quant_resi: float = 0.5
    ):
        super().__init__()
        self.vocab_size, self.cvae = vocab_size, cvae
        self.patch_nums = tuple(patch_nums)
        # Registration order mirrors the official module so state_dict() lists keys identically.
        self.quant_resi = PhiShared(cvae, share_quant_resi, quant_resi)
        self.embedding = nn.Embedding(vocab_size, cvae)
        # Usage statistics of the official VQVAE trainer; kept only so strict loads see the key.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.phi_map = phi_index_map(len(self.patch_nums), share_quant_resi)

    # ---------------------------------------------------------------- helpers
    @property
    def grid(self) -> int:
        return self.patch_nums[-1]

    def phi(self, si: int, h: torch.Tensor) -> torch.Tensor:
        return self.quant_resi.qresi_ls[self.phi_map[si]](h)

    def lookup(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Plain L2 nearest neighbour, ||z||^2 + ||e||^2 - 2 z.e as in VAR (same rounding)."""
        e = self.embedding.weight
        d = z_NC.square().sum(1, keepdim=True) + e.square().sum(1)
        d = torch.addmm(d, z_NC, e.T, alpha=-2, beta=1)
        return d.argmin(dim=1)

    def embed_up(self, si: int, idx_Bl: torch.Tensor) -> torch.Tensor:
        """h_si: codebook vectors of scale si on the full grid (phi'd, except at the last scale)."""
        B, pn, G = idx_Bl.shape[0], self.patch_nums[si], self.grid
        h = self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.cvae, pn, pn)
        if si == len(self.patch_nums) - 1:
            return h  # last scale: already G x G, no interpolation and no phi
        return self.phi(si, F.interpolate(h, size=(G, G), mode="bicubic"))

    @staticmethod
    def down(f: torch.Tensor, pn: int) -> torch.Tensor:
        return f if f.shape[-1] == pn else F.interpolate(f, size=(pn, pn), mode="area")

    # ---------------------------------------------------------------- training
    @torch.no_grad()
    def encode(self, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """f (B, C, G, G) -> (index maps [(B, pn^2)] per scale, r_last (B, G*G, C))."""
        B, C = f.shape[:2]
        r = f.float().clone()
        idx_list, K = [], len(self.patch_nums)
        r_last = None
        for si, pn in enumerate(self.patch_nums):
            z = self.down(r, pn) if si < K - 1 else r
            idx = self.lookup(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
            idx_list.append(idx)
            h = self.embed_up(si, idx)
            if si == K - 1:
                r_last = r.flatten(2).transpose(1, 2).contiguous()  # remainder before the last token
            r = r - h
        return idx_list, r_last

    def next_input(self, si: int, f_hat: torch.Tensor) -> torch.Tensor:
        """Input tokens for scale si + 1: area-down of the running f_hat, channel-last row-major."""
        pn = self.patch_nums[si + 1]
        return self.down(f_hat, pn).flatten(2).transpose(1, 2)

    def teacher_forcing_inputs(self, idx_list: list[torch.Tensor]) -> torch.Tensor:
        """(B, L - pn_0^2, C): token si's input summarises all scales < si (spec 2.5)."""
        B, G = idx_list[0].shape[0], self.grid
        f_hat = idx_list[0].new_zeros(B, self.cvae, G, G, dtype=self.embedding.weight.dtype)
        outs = []
        for si in range(len(self.patch_nums) - 1):
            f_hat = f_hat + self.embed_up(si, idx_list[si])
            outs.append(self.next_input(si, f_hat))
        return torch.cat(outs, dim=1)

    def forward_train(self, f: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenizer training (VAR's VectorQuantizer2 recipe, last scale without phi as in 2.3).

        Returns (f_hat with a straight-through gradient to f, commitment, codebook) losses, each
        averaged over scales: commitment = beta * ||f - sg(f_hat_k)||^2 trains the encoder,
        codebook = ||f_hat_k - sg(f)||^2 trains the embedding and the phi convs (no EMA).
        """
        f = f.float()
        B, C = f.shape[:2]
        f_det = f.detach()
        r = f_det.clone()  # residual only drives the (non-differentiable) lookups
        f_hat = torch.zeros_like(f)
        commit, codebook = f.new_zeros(()), f.new_zeros(())
        K = len(self.patch_nums)
        for si, pn in enumerate(self.patch_nums):
            z = self.down(r, pn) if si < K - 1 else r
            with torch.no_grad():
                idx = self.lookup(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
            h = self.embed_up(si, idx)
            f_hat = f_hat + h
            r = r - h.detach()
            # Losses on the running sum (as VAR): every scale is pushed to explain f jointly.
            commit = commit + F.mse_loss(f, f_hat.detach())
            codebook = codebook + F.mse_loss(f_hat, f_det)
        f_ste = f + (f_hat - f).detach()
        return f_ste, commit * (beta / K), codebook / K

    # ---------------------------------------------------------------- inference
    def accumulate(
        self, si: int, idx_Bl: torch.Tensor, f_hat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add sampled scale si to f_hat; return (f_hat, next-scale input or None at the end)."""
        f_hat = f_hat + self.embed_up(si, idx_Bl)
        nxt = self.next_input(si, f_hat) if si < len(self.patch_nums) - 1 else None
        return f_hat, nxt
