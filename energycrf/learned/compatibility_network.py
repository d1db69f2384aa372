r"""The nonlinear part of the learned compatibility transform :math:`\psi_{\theta_C}` (paper eq. 11):
a per-site MLP on the message, conditioned on the text by FiLM and cross-attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CompatibilityNetwork"]


class CompatibilityNetwork(nn.Module):
    r"""The nonlinear part of :math:`\psi_{\theta_C}`: a per-site MLP on the message, text-conditioned.

    ``h = conv1x1(m)``; FiLM :math:`h \leftarrow h \odot (1 + \gamma(\bar c)) + \beta(\bar c)` from the
    pooled embedding :math:`\bar c` (the mean of the tokens); a single-head cross-attention
    from each site to the tokens, :math:`h \leftarrow h + W_o\,\mathrm{softmax}(q k^\top/\sqrt a)\,v`;
    then SiLU and ``conv1x1`` back to ``C`` channels. The FiLM, attention-output and output
    layers start at zero, so an untrained network outputs zero.

    Args:
        channels: latent channels ``C``.
        hidden_channels: width of the hidden per-site features.
        cond_dim: embedding width ``D`` (``None``: unconditioned).
        conditioning: ``"film"``, ``"cross_attention"`` or ``"both"``.
        attention_dim: width ``a`` of queries, keys and values.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 32,
        cond_dim: int | None = None,
        conditioning: str = "both",
        attention_dim: int = 32,
    ):
        super().__init__()
        self.cond_dim = cond_dim
        self.conditioning = conditioning
        self.inp = nn.Conv2d(channels, hidden_channels, 1)
        self.out = nn.Conv2d(hidden_channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.use_film = cond_dim is not None and conditioning in ("film", "both")
        self.use_attention = cond_dim is not None and conditioning in ("cross_attention", "both")
        if cond_dim is not None:
            self.cond_norm = nn.LayerNorm(cond_dim)
        if self.use_film:
            self.film = nn.Linear(cond_dim, 2 * hidden_channels)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        if self.use_attention:
            self.attention_dim = attention_dim
            self.to_q = nn.Conv2d(hidden_channels, attention_dim, 1, bias=False)
            self.to_k = nn.Linear(cond_dim, attention_dim, bias=False)
            self.to_v = nn.Linear(cond_dim, attention_dim, bias=False)
            self.to_o = nn.Conv2d(attention_dim, hidden_channels, 1)
            nn.init.zeros_(self.to_o.weight)
            nn.init.zeros_(self.to_o.bias)

    def prepare(self, c: Tensor | None, null: Tensor | None, batch: int) -> dict[str, Tensor]:
        """Per-forward quantities that do not change across iterations (FiLM, keys, values).

        ``c``: tokens ``[B, L, D]``, pooled ``[B, D]`` or None. ``null``: a learned ``[D]``
        token (or None). The attention always sees ``null`` next to the tokens (a slot
        that lets a site attend to nothing); FiLM reads the mean of the tokens, or
        ``null`` when ``c`` is None.
        """
        if self.cond_dim is None:
            return {}
        parts = [] if null is None else [null.reshape(1, 1, -1).expand(batch, 1, -1)]
        if c is not None:
            parts.append(c if c.dim() == 3 else c[:, None])
        if not parts:
            return {}
        tokens = self.cond_norm(torch.cat(parts, 1))  # [B, L (+1), D]
        ctx: dict[str, Tensor] = {}
        if self.use_film:
            pooled = tokens[:, 1:].mean(1) if (c is not None and null is not None) else tokens.mean(1)
            gamma, beta = self.film(pooled).chunk(2, dim=-1)
            ctx["gamma"], ctx["beta"] = gamma[..., None, None], beta[..., None, None]
        if self.use_attention:
            ctx["k"], ctx["v"] = self.to_k(tokens), self.to_v(tokens)
        return ctx

    def forward(self, m: Tensor, ctx: dict[str, Tensor]) -> Tensor:
        h = self.inp(m)
        if "gamma" in ctx:
            h = h * (1 + ctx["gamma"]) + ctx["beta"]
        if "k" in ctx:
            b, _, height, width = h.shape
            q = self.to_q(h).flatten(2).transpose(1, 2)  # [B, HW, a]
            att = torch.softmax(q @ ctx["k"].transpose(1, 2) / math.sqrt(self.attention_dim), dim=-1)
            a = (att @ ctx["v"]).transpose(1, 2).reshape(b, self.attention_dim, height, width)
            h = h + self.to_o(a)
        return self.out(F.silu(h))
