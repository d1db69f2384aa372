r"""The learned, unrolled LatentCRF layer: the paper's Algorithm 1 (eq. 11) as an ``nn.Module``.

Starting from :math:`y^{(0)} = x`, each of ``num_iterations`` steps (weights shared) computes

.. math::

    \tilde y &= W^s y^{(t)}                                  && \text{message passing (Pairwise.message)}\\
    \tilde y &\leftarrow \psi_{\theta_C}(\tilde y, c)         && \text{compatibility transform}\\
    \tilde y &\leftarrow \tilde y + \xi_{HO}(y^{(t)})          && \text{higher order (FieldOfExperts.score)}\\
    \tilde y &\leftarrow \tilde y + w \odot x                  && \text{unary addition}\\
    y^{(t+1)} &= \psi_N(\tilde y)                              && \text{normalisation}

with :math:`\xi_{HO}(y) = \tfrac12 \sum_m J_m^- \odot \mathrm{relu}(J_m \odot y)` (eq. 11).
The operators are the energies' own: :meth:`Pairwise.message`, :meth:`Pairwise.degree`,
:meth:`Pairwise.compatibility_matrix` and :meth:`FieldOfExperts.score`.

Faithfulness. With :math:`\psi_C(m) = M m` (``compatibility="linear"``, :math:`M = P^\top P`
from the pairwise term) and :math:`\psi_N(m)_i = K_i^{-1} m_i` with
:math:`K_i = \mathrm{diag}(w) + d_i M` (``normalization="mean_field"``), one step is

.. math::  y_i^{(t+1)} = K_i^{-1}\big(w \odot x_i + M (W^s y^{(t)})_i + \xi_{HO}(y^{(t)})_i\big),

the paper's eq. 9 done in parallel, which is exactly the mean-field (Jacobi) update
:math:`y \leftarrow y - A^{-1}\nabla E` on :math:`E = E_u + E_p + E_f` with the paper's
ReLU expert (:math:`A_i = 2\,\mathrm{diag}(w) + 2 d_i M`, the concave FoE contributing no
curvature). :meth:`LatentCRF.from_energy` builds that layer from an energy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..energies._validation import check_choice, check_condition, check_int, check_latent
from ..energies.base import Energy, ScaledEnergy, SumEnergy
from ..energies.field_of_experts import FieldOfExperts
from ..energies.kernels import DenseKernel, LocalKernel, LongRangeKernel, SpatialKernel
from ..energies.pairwise import Pairwise
from ..energies.potentials import ReLUExpert
from ..energies.unary import Unary
from .compatibility_network import CompatibilityNetwork
# ModelMixin is named here because diffusers' pipeline loader looks the base classes up in the
# module a component's class comes from (model_index.json names energycrf.learned.latent_crf)
from .pretrained import CONFIG_NAME, LEGACY_WEIGHTS_NAME, WEIGHTS_NAME, ModelMixin, PretrainedModel  # noqa: F401

__all__ = ["LatentCRF", "CompatibilityNetwork"]

COMPATIBILITIES = ("mlp", "linear")
NORMALIZATIONS = ("batch", "group", "none", "mean_field")
CONDITIONINGS = ("film", "cross_attention", "both")


# ---------------------------------------------------------------------------------------
# kernels <-> JSON (for save_pretrained)


def _kernel_config(kernel: SpatialKernel) -> dict:
    if type(kernel) is LocalKernel:
        return {"type": "LocalKernel", "radius": kernel.radius, "sigma": kernel.sigma, "strength": kernel.strength,
                "learnable": kernel.learnable, "boundary": kernel.boundary}
    if type(kernel) is LongRangeKernel:
        return {"type": "LongRangeKernel", "sigma": kernel.sigma, "weight": kernel.weight, "boundary": kernel.boundary}
    if type(kernel) is DenseKernel:
        return {"type": "DenseKernel", "sites": int(kernel.matrix.shape[0])}
    raise TypeError(
        f"save_pretrained can describe LocalKernel, LongRangeKernel and DenseKernel, got {type(kernel).__name__}"
    )


def _kernel_from_config(spec: dict) -> SpatialKernel:
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"kernel must be a SpatialKernel, None or a kernel config dict with a 'type', got {spec!r}")
    kind = spec["type"]
    args = {k: v for k, v in spec.items() if k != "type"}
    if kind == "LocalKernel":
        return LocalKernel(**args)
    if kind == "LongRangeKernel":
        return LongRangeKernel(**args)
    if kind == "DenseKernel":  # the matrix itself comes with the weights
        n = int(args["sites"])
        return DenseKernel(torch.zeros(n, n))
    raise ValueError(f"unknown kernel type {kind!r} (LocalKernel, LongRangeKernel, DenseKernel)")


# ---------------------------------------------------------------------------------------
# input dtypes and values

# the dtypes that hold every value of the key exactly: an input of the key's dtype runs in them
_HOLDS_EXACTLY = {torch.float16: (torch.float32, torch.float64), torch.bfloat16: (torch.float32, torch.float64),
                  torch.float32: (torch.float64,)}


def _compute_dtype(x: Tensor, layer: torch.dtype | None) -> torch.dtype:
    """The dtype the layer computes in for input ``x``: its own, when that holds ``x`` exactly."""
    if layer is None or x.dtype == layer:
        return x.dtype
    if layer in _HOLDS_EXACTLY.get(x.dtype, ()):
        return layer
    raise TypeError(f"x has dtype {x.dtype}, which the layer's dtype {layer} cannot hold exactly; "
                    f"cast the layer (crf.to({x.dtype})) or the input (x.to({layer}))")


def _check_finite(name: str, t: Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        n = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} holds {n} non-finite value{'s' if n > 1 else ''} (NaN or inf) of {t.numel()}; "
                         "LatentCRF refuses them: the message passing would spread them to the neighbours and, "
                         "in training, batch norm to the whole batch and its running statistics")


# ---------------------------------------------------------------------------------------
# the layer


class LatentCRF(PretrainedModel):
    r"""The LatentCRF inference layer :math:`\mathcal{M}` (paper Algorithm 1, eq. 11).

    Args:
        channels: latent channels ``C`` (4 for Stable Diffusion).
        cond_dim: text-embedding width ``D`` (768 for CLIP ViT-L); ``None`` for an
            unconditioned layer. A conditioned layer accepts tokens ``[B, L, D]``, a pooled
            embedding ``[B, D]`` or ``c=None`` (then a learned null embedding is used).
        num_iterations: unrolled steps (5 in the paper), weights shared across them.
        kernel: the pairwise spatial kernel :math:`W^s` (a ``SpatialKernel`` or its config
            dict); default a learnable Gaussian ``LocalKernel`` (radius 2, sigma 1,
            interior degree 1).
        num_filters: FoE experts ``M``; ``0`` drops the higher-order term :math:`\xi_{HO}`
            (the paper's Table 5 ablation).
        kernel_size: FoE filter size ``s`` (odd; 3 or 5).
        zero_center: zero the FoE filters' centre taps (footnote to eq. 9).
        filter_constraint: FoE filter bound: ``None``, ``"normalize"`` or ``"clip"``.
        filter_init_scale: L2 norm of each initial FoE filter (small: :math:`\xi_{HO}` starts near 0).
        compatibility: :math:`\psi_C`: ``"mlp"`` (default: :math:`g\,M m + \mathrm{MLP}(m, c)`,
            a gated linear compatibility plus a text-conditioned per-site network) or
            ``"linear"`` (:math:`M(c)\,m` with :math:`M = P(c)^\top P(c)`, text-conditioned
            through ``TextCompatibility`` when ``cond_dim`` is set).
        hidden_channels: width of the MLP.
        conditioning: ``"film"``, ``"cross_attention"`` or ``"both"`` (MLP only).
        attention_dim: width of the cross-attention.
        normalization: :math:`\psi_N`: ``"batch"`` (the paper's batch norm, shared across
            iterations), ``"group"`` (GroupNorm with ``num_groups`` groups), ``"none"``, or
            ``"mean_field"`` (:math:`K_i^{-1}`, :math:`K_i = \mathrm{diag}(w) + d_i M`, eq. 9).
        num_groups: groups for ``"group"`` (default 1).
        unary_weight: initial unary weight ``w`` (the unary addition is :math:`w \odot x`).
        learn_unary_weight: learn ``w`` (one per channel, kept positive).
        boundary: ``"zeros"`` or ``"circular"`` for the FoE filters (the kernel has its own).
        return_all: return every iterate ``[T, B, C, H, W]`` instead of the last one.

    Initialisation: the untrained layer is close to a sensible denoiser. With
    ``normalization="mean_field"`` it is exactly ``num_iterations`` mean-field steps on
    ``Unary + Pairwise + FieldOfExperts`` (a mild smoother; the MLP starts at zero and the
    gate ``g`` at one). With the other normalisations the gate starts at zero, so the
    message adds nothing yet and the layer starts at :math:`\psi_N(x + \xi_{HO})`, close to
    :math:`\psi_N(x)`: the identity for ``"none"`` (and for ``"batch"`` in eval mode with
    fresh statistics); a per-channel standardisation of ``x`` for ``"batch"`` in training mode.

    Saving and loading: a ``diffusers.ModelMixin`` + ``ConfigMixin`` when diffusers can be
    imported (else the same API without it: :mod:`energycrf.learned.pretrained`). The
    constructor arguments are registered with ``register_to_config`` (the kernel as its spec
    dict), so ``crf.config`` rebuilds the layer and ``save_pretrained(dir, variant=...)`` /
    ``from_pretrained(dir, subfolder=..., torch_dtype=...)`` work as for a diffusers UNet,
    with atomic, checksummed safetensors files. ``from_pretrained`` may override
    ``num_iterations`` and ``return_all``.

    Example:
        >>> import torch, energycrf as ec
        >>> crf = ec.LatentCRF(channels=4, cond_dim=768)
        >>> x = torch.randn(2, 4, 8, 8)
        >>> crf(x, torch.randn(2, 77, 768)).shape, crf(x, torch.randn(2, 768)).shape, crf(x).shape
        (torch.Size([2, 4, 8, 8]), torch.Size([2, 4, 8, 8]), torch.Size([2, 4, 8, 8]))
    """

    def __init__(
        self,
        channels: int = 4,
        cond_dim: int | None = None,
        num_iterations: int = 5,
        *,
        kernel: SpatialKernel | dict | None = None,
        num_filters: int = 8,
        kernel_size: int = 3,
        zero_center: bool = False,
        filter_constraint: str | None = None,
        filter_init_scale: float = 0.1,
        compatibility: str = "mlp",
        hidden_channels: int = 32,
        conditioning: str = "both",
        attention_dim: int = 32,
        normalization: str = "batch",
        num_groups: int | None = None,
        unary_weight: float = 1.0,
        learn_unary_weight: bool = True,
        boundary: str = "zeros",
        return_all: bool = False,
    ):
        super().__init__()
        channels = check_int("channels", channels, minimum=1)
        if cond_dim is not None:
            cond_dim = check_int("cond_dim", cond_dim, minimum=1)
        num_iterations = check_int("num_iterations", num_iterations, minimum=1)
        num_filters = check_int("num_filters", num_filters, minimum=0)
        kernel_size = check_int("kernel_size", kernel_size, minimum=1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a centred FoE window), got {kernel_size}")
        hidden_channels = check_int("hidden_channels", hidden_channels, minimum=1)
        attention_dim = check_int("attention_dim", attention_dim, minimum=1)
        check_choice("compatibility", compatibility, COMPATIBILITIES)
        check_choice("conditioning", conditioning, CONDITIONINGS)
        check_choice("normalization", normalization, NORMALIZATIONS)
        if num_groups is None:
            num_groups = 1
        num_groups = check_int("num_groups", num_groups, minimum=1)
        if normalization == "group" and channels % num_groups:
            raise ValueError(f"num_groups must divide channels={channels}, got {num_groups}")
        if isinstance(unary_weight, bool) or not isinstance(unary_weight, (int, float)) or not unary_weight > 0:
            raise ValueError(f"unary_weight must be a positive number, got {unary_weight!r}")
        if not isinstance(return_all, bool):
            raise TypeError(f"return_all must be a bool, got {type(return_all).__name__}")

        if kernel is None:
            kernel = LocalKernel(radius=2, sigma=1.0, strength=1.0, learnable=True)
        elif isinstance(kernel, dict):
            kernel = _kernel_from_config(kernel)
        elif not isinstance(kernel, SpatialKernel):
            raise TypeError(f"kernel must be None, a SpatialKernel or a kernel config dict, got {type(kernel).__name__}")
        kernel_spec = _kernel_config(kernel) if type(kernel) in (LocalKernel, LongRangeKernel, DenseKernel) else None

        self.channels, self.cond_dim, self.num_iterations = channels, cond_dim, num_iterations
        self.compatibility, self.normalization, self.return_all = compatibility, normalization, return_all
        text_linear = compatibility == "linear" and cond_dim is not None
        self.unary = Unary(weight=torch.full((channels,), float(unary_weight)), learnable=learn_unary_weight)
        self.pairwise = Pairwise(
            channels,
            kernel=kernel,
            compatibility="text" if text_linear else "learnable",
            cond_dim=cond_dim if text_linear else None,
        )
        self.field_of_experts = FieldOfExperts(
            channels,
            num_filters=num_filters,
            kernel_size=kernel_size,
            potential=ReLUExpert(),
            zero_center=zero_center,
            filter_constraint=filter_constraint,
            init_scale=filter_init_scale,
            boundary=boundary,
        ) if num_filters else None
        self.scales = {"unary": 1.0, "pairwise": 1.0, "field_of_experts": 1.0}
        if compatibility == "mlp":
            self.network = CompatibilityNetwork(channels, hidden_channels, cond_dim, conditioning, attention_dim)
            self.gate = nn.Parameter(torch.tensor(1.0 if normalization == "mean_field" else 0.0))
        else:
            self.network, self.gate = None, None
        if normalization == "batch":
            self.norm: nn.Module | None = nn.BatchNorm2d(channels)
        elif normalization == "group":
            self.norm = nn.GroupNorm(num_groups, channels)
        else:
            self.norm = None
        # the condition when c is None, and an always-present attention slot (unit scale: it is layer-normalised)
        self.null_condition = nn.Parameter(torch.randn(cond_dim)) if cond_dim is not None else None
        config = {
            "channels": channels, "cond_dim": cond_dim, "num_iterations": num_iterations,
            "kernel": kernel_spec, "num_filters": num_filters, "kernel_size": kernel_size,
            "zero_center": bool(zero_center), "filter_constraint": filter_constraint,
            "filter_init_scale": float(filter_init_scale), "compatibility": compatibility,
            "hidden_channels": hidden_channels, "conditioning": conditioning, "attention_dim": attention_dim,
            "normalization": normalization, "num_groups": num_groups, "unary_weight": float(unary_weight),
            "learn_unary_weight": bool(learn_unary_weight), "boundary": boundary, "return_all": return_all,
        }
        if kernel_spec is not None:  # a custom kernel class has no spec: no config, and save_pretrained refuses
            # registered by hand, not with diffusers' @register_to_config: that would record the
            # arguments before they are checked, and a kernel object that JSON cannot hold
            self.register_to_config(**config)

    # ------------------------------------------------------------------ faithful layer
    @classmethod
    def from_energy(cls, energy: Energy, num_iterations: int = 5, *, return_all: bool = False) -> "LatentCRF":
        r"""The layer that *is* the mean-field solver on ``energy`` (``psi_C = M``, ``psi_N = K^{-1}``).

        ``energy`` must be a sum of one :class:`Unary`, at most one :class:`Pairwise` and at
        most one :class:`FieldOfExperts` with the paper's :class:`ReLUExpert` (each possibly
        scaled by a positive number). The layer shares the energy's modules, so its
        parameters *are* the energy's: training the layer trains the energy.

        Each iterate equals the solver's: ``y^{(t+1)} = y^{(t)} - A^{-1} \nabla E(y^{(t)})``
        with damping 1 (``MeanField(damping=1.0)``).
        """
        num_iterations = check_int("num_iterations", num_iterations, minimum=1)
        if not isinstance(energy, Energy):
            raise TypeError(f"energy must be an energycrf Energy, got {type(energy).__name__}")
        terms = list(energy.terms) if isinstance(energy, SumEnergy) else [energy]
        found: dict[str, tuple[float, Energy]] = {}
        for term in terms:
            scale = 1.0
            if isinstance(term, ScaledEnergy):
                scale, term = term.scale, term.term
            kind = {Unary: "unary", Pairwise: "pairwise", FieldOfExperts: "field_of_experts"}.get(type(term))
            if kind is None:
                raise ValueError(
                    "from_energy needs a sum of Unary, Pairwise and FieldOfExperts terms (Algorithm 1's structure), "
                    f"got a {type(term).__name__} term"
                )
            if kind in found:
                raise ValueError(f"from_energy needs at most one {type(term).__name__} term, got several")
            found[kind] = (scale, term)
        if "unary" not in found:
            raise ValueError("from_energy needs a Unary term (the unary addition and K = w I + d M)")
        if "field_of_experts" in found and not isinstance(found["field_of_experts"][1].potential, ReLUExpert):
            raise ValueError(
                "from_energy needs the paper's ReLUExpert potential: its FoE term is concave (no curvature), "
                f"so xi_HO enters the update as is; got {type(found['field_of_experts'][1].potential).__name__}"
            )
        unary = found["unary"][1]
        channels = unary.channels or (found["pairwise"][1].channels if "pairwise" in found else None)
        if channels is None and "field_of_experts" in found:
            channels = found["field_of_experts"][1].channels
        if channels is None:
            raise ValueError("from_energy cannot tell the number of channels: give Unary a [C] weight or add a Pairwise term")

        layer = cls.__new__(cls)  # no constructor arguments describe it: nothing is registered, no config
        super(LatentCRF, layer).__init__()
        layer.channels, layer.num_iterations, layer.return_all = channels, num_iterations, bool(return_all)
        layer.compatibility, layer.normalization = "linear", "mean_field"
        layer.unary = unary
        layer.pairwise = found["pairwise"][1] if "pairwise" in found else None
        layer.field_of_experts = found["field_of_experts"][1] if "field_of_experts" in found else None
        layer.cond_dim = layer.pairwise.cond_dim if layer.pairwise is not None else None
        layer.scales = {k: (found[k][0] if k in found else 1.0) for k in ("unary", "pairwise", "field_of_experts")}
        layer.network, layer.gate, layer.norm, layer.null_condition = None, None, None, None
        return layer

    # ------------------------------------------------------------------ pieces
    def _unary_weight(self, x: Tensor) -> Tensor:
        """``w`` as ``[C]``."""
        w = self.unary.weight().to(dtype=x.dtype, device=x.device)
        return self.scales["unary"] * w.expand(self.channels)

    def _compatibility(self, c: Tensor | None, x: Tensor) -> Tensor | None:
        """``M`` (``[B, C, C]``, scaled like the pairwise term) or None without a pairwise term."""
        if self.pairwise is None:
            return None
        return self.scales["pairwise"] * self.pairwise.compatibility_matrix(c, x.shape[0], x.dtype, x.device)

    def _check_inputs(self, x: Any, c: Any) -> tuple[Tensor, Tensor | None]:
        """``x`` and ``c`` checked (finite, see :meth:`forward`) and cast to the computation's dtype."""
        check_latent("x", x)
        if x.shape[1] != self.channels:
            raise ValueError(f"x must have {self.channels} channels (the layer's channels), got shape {tuple(x.shape)}")
        layer = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        x = x.to(_compute_dtype(x, layer))
        c = check_condition(c, x.shape[0], x.dtype, x.device)
        _check_finite("x", x)
        if c is not None:
            _check_finite("c", c)
        if c is not None:
            if self.cond_dim is None:
                raise ValueError(
                    f"this LatentCRF is not conditioned (cond_dim=None) but c of shape {tuple(c.shape)} was given; "
                    "build it with cond_dim=D or pass c=None"
                )
            if c.shape[-1] != self.cond_dim:
                raise ValueError(
                    f"c must have feature size cond_dim={self.cond_dim} in its last dimension, got shape {tuple(c.shape)}"
                )
            c = c.to(x.dtype)
        if self.pairwise is not None:
            self.pairwise._check_spatial(x.shape[-2], x.shape[-1])
        if self.field_of_experts is not None:
            self.field_of_experts._check_spatial(x.shape[-2], x.shape[-1])
        return x, c

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        c: Tensor | None = None,
        *,
        num_iterations: int | None = None,
        return_all: bool | None = None,
    ) -> Tensor:
        r"""Run Algorithm 1 from :math:`y^{(0)} = x`.

        Args:
            x: the noisy latents ``[B, C, H, W]``.
            c: ``None``, pooled ``[B, D]`` or tokens ``[B, L, D]``.
            num_iterations: override the layer's number of steps for this call.
            return_all: override ``return_all`` for this call.

        Returns:
            ``y^{(T)}`` like ``x``, or all iterates ``[T, B, C, H, W]`` when ``return_all``.

        Dtypes: the layer computes in its parameters' dtype. An input that dtype holds exactly
        (float16 or bfloat16 on a float32 or float64 layer, float32 on a float64 one) is cast
        to it, and the output back to the input's dtype; a more precise input (float64 on a
        float32 layer) raises a ``TypeError``. Non-finite values in ``x`` or ``c`` raise a
        ``ValueError`` in training and in eval mode, before any statistic is updated.
        """
        dtype = x.dtype if isinstance(x, Tensor) else None
        x, c = self._check_inputs(x, c)
        steps = self.num_iterations if num_iterations is None else check_int("num_iterations", num_iterations, minimum=1)
        keep_all = self.return_all if return_all is None else bool(return_all)
        b, channels, height, width = x.shape

        w = self._unary_weight(x)
        unary = w.view(1, -1, 1, 1) * x
        null = None if self.null_condition is None else self.null_condition.to(x.dtype)
        c_pooled = c if (c is not None or null is None) else null[None].expand(b, -1)  # c=None: the null embedding
        M = self._compatibility(c_pooled, x)  # None without a pairwise term
        ctx = self.network.prepare(c, null, b) if self.network is not None else {}
        chol = None
        if self.normalization == "mean_field":
            K = torch.diag_embed(w).expand(b, height, width, channels, channels)
            if M is not None:
                d = self.pairwise.degree(height, width, x.dtype, x.device)
                K = K + d[None, :, :, None, None] * M[:, None, None]
            if K.dtype in (torch.float16, torch.bfloat16):  # factorise in float32 (no half-precision Cholesky)
                K = K.float()
            chol, info = torch.linalg.cholesky_ex(K)
            if bool((info != 0).any()):
                raise ValueError(
                    "normalization='mean_field' needs K_i = diag(w) + d_i M positive definite; "
                    "it is not (check the unary weight and the compatibility matrix)"
                )

        y = x
        iterates = []
        for _ in range(steps):
            m = torch.zeros_like(x) if self.pairwise is None else self.pairwise.message(y)  # W^s y
            if self.compatibility == "linear":
                m = torch.einsum("bcd,bdhw->bchw", M, m) if M is not None else m
            else:
                m = self.gate * torch.einsum("bcd,bdhw->bchw", M, m) + self.network(m, ctx)
            if self.field_of_experts is not None:
                m = m + self.scales["field_of_experts"] * self.field_of_experts.score(y)  # xi_HO(y), eq. 11
            m = m + unary
            y = self._normalize(m, chol)
            if keep_all:
                iterates.append(y)
        return (torch.stack(iterates) if keep_all else y).to(dtype)

    def _normalize(self, m: Tensor, chol: Tensor | None) -> Tensor:
        r""":math:`\psi_N`."""
        if chol is not None:
            rhs = m.permute(0, 2, 3, 1).unsqueeze(-1).to(chol.dtype)  # [B, H, W, C, 1]
            return torch.cholesky_solve(rhs, chol).squeeze(-1).permute(0, 3, 1, 2).to(m.dtype)
        if self.norm is not None:
            return self.norm(m)
        return m

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, cond_dim={self.cond_dim}, num_iterations={self.num_iterations}, "
            f"compatibility={self.compatibility!r}, normalization={self.normalization!r}"
        )

    # ------------------------------------------------------------------ saving and loading
    # config, save_pretrained and from_pretrained: energycrf.learned.pretrained.PretrainedModel
    _load_overrides = frozenset({"num_iterations", "return_all"})
    _no_config_reason = "built with from_energy or a custom kernel class"
