"""A pytest base class that runs the conformance checks with hypothesis-drawn cases.

Subclass :class:`EnergyConformance` in a test module (name the subclass ``Test...``),
write ``make_energy(self, case)``, and pytest collects one test per check::

    class TestMyTerm(EnergyConformance):
        conditions = (None,)
        def make_energy(self, case):
            return MyTerm(channels=case.channels)

Each subclass gets its own test functions (so hypothesis keeps one database entry and
one executor per class). The checks carry their own hypothesis settings (no deadline, a
bounded number of examples that follows a loaded profile: :func:`suite_settings`), and the
``gpu`` marker of the device test is registered by the package's pytest plugin
(:mod:`energycrf.testing.pytest_plugin`), so the suite runs in any project as it runs here.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import conformance
from .cases import DEFAULT_CASES, Case
from .strategies import cases

__all__ = ["EnergyConformance", "SUITE_MAX_EXAMPLES", "suite_settings"]


#: Examples per check when no hypothesis profile chose a number: hypothesis's own default (100
#: per test) is meant for cheap tests, and each example here builds dense Hessians.
SUITE_MAX_EXAMPLES = 10


def suite_settings(example_fraction: float = 1.0, max_examples: int | None = None) -> settings:
    """The hypothesis settings of one check, on top of the active profile.

    The suite runs in any project, whatever its hypothesis configuration: there is no
    deadline (a float64 Hessian of a drawn case takes longer than hypothesis's default
    200 ms), and the health checks that a slow example or one test function run by several
    classes would trip are off. The number of examples is ``max_examples`` when given; else
    the loaded profile's ``max_examples`` (when a profile changed it from hypothesis's
    default) or :data:`SUITE_MAX_EXAMPLES`, times ``example_fraction``, at least 2.
    """
    base = settings.default
    if max_examples is None:
        chosen = base.max_examples != settings.get_profile("default").max_examples
        max_examples = max(2, round((base.max_examples if chosen else SUITE_MAX_EXAMPLES) * example_fraction))
    suppressed = set(base.suppress_health_check) | {HealthCheck.too_slow, HealthCheck.differing_executors}
    return settings(base, deadline=None, max_examples=max_examples,
                    suppress_health_check=sorted(suppressed, key=lambda h: h.value))


def _make_test(check: str, example_fraction: float = 1.0, max_examples: int | None = None):
    @given(data=st.data())
    def test(self, data):
        case = data.draw(self.case_strategy(check), label="case")
        self.run_check(check, case)

    test.__name__ = f"test_{check}"
    test.__doc__ = conformance.CHECKS[check].__doc__
    return suite_settings(example_fraction, max_examples)(test)


class EnergyConformance:
    """Base class of conformance test classes (like GPyTorch's ``BaseKernelTestCase``).

    Override :meth:`make_energy`; tune with class attributes:

    Attributes:
        channels: a fixed channel count, or ``None`` to draw ``C`` in ``1..max_channels``.
        conditions: condition kinds the term accepts (``None``, ``"pooled"``, ``"tokens"``).
        min_size, max_size: the range of ``H`` and ``W`` (Hessians are built for the
            curvature, radius and margin checks, so keep ``max_size`` small).
        max_batch, max_channels, max_cond_dim: other bounds of the drawn cases.
        builtin: require ``convexity_margin`` to be reported (not ``None``).
        smooth: ``False`` for a term whose energy has jumps: skips ``gradcheck`` and the
            majoriser check, which assume a continuous energy.
        skip_checks: names of checks (see ``energycrf.testing.CHECKS``) not to run.
        check_options: extra keyword arguments per check name.
        example_fraction: the share of the examples each check runs (at least 2); lower
            it for classes that sweep many configurations.
        max_examples: a fixed number of examples per check (``None``: from the loaded
            hypothesis profile, see :func:`suite_settings`).
    """

    channels: ClassVar[int | None] = None
    conditions: ClassVar[tuple] = (None, "pooled", "tokens")
    min_size: ClassVar[int] = 1
    max_size: ClassVar[int] = 5
    max_batch: ClassVar[int] = 2
    max_channels: ClassVar[int] = 3
    max_cond_dim: ClassVar[int] = 5
    builtin: ClassVar[bool] = False
    smooth: ClassVar[bool] = True
    skip_checks: ClassVar[tuple] = ()
    check_options: ClassVar[dict] = {}
    example_fraction: ClassVar[float] = 1.0
    max_examples: ClassVar[int | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for check in conformance.CHECKS:
            setattr(cls, f"test_{check}", _make_test(check, cls.example_fraction, cls.max_examples))

    # ------------------------------------------------------------------ hooks
    def make_energy(self, case: Case) -> torch.nn.Module:
        """Build the term under test for ``case`` (use ``case.channels``, ``case.cond_dim``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_energy(self, case)")

    def case_strategy(self, check: str):
        """The hypothesis strategy of cases for ``check`` (override to constrain shapes)."""
        return cases(
            channels=self.channels,
            max_channels=self.max_channels,
            max_batch=self.max_batch,
            min_size=self.min_size,
            max_size=self.max_size,
            conditions=self.conditions,
            max_cond_dim=self.max_cond_dim,
        )

    def skipped(self) -> set[str]:
        skip = set(self.skip_checks)
        if not self.smooth:
            skip |= {"gradcheck", "majorizer"}
        return skip

    def run_check(self, check: str, case: Case) -> None:
        if check in self.skipped():
            pytest.skip(f"{check} is not applicable to {type(self).__name__}")
        options = dict(self.check_options.get(check, {}))
        if check == "convexity_margin" and self.builtin:
            options.setdefault("required", True)
        conformance.CHECKS[check](self.make_energy, case, **options)

    def fixed_cases(self) -> list[Case]:
        """:data:`DEFAULT_CASES` adapted to this class's constraints (channels, sizes, conditions)."""
        out = []
        for case in DEFAULT_CASES:
            if case.condition not in self.conditions:
                case = case.replace(condition=self.conditions[0])
            out.append(case.replace(
                channels=self.channels or min(case.channels, self.max_channels),
                height=min(max(case.height, self.min_size), max(self.max_size, self.min_size)),
                width=min(max(case.width, self.min_size), max(self.max_size, self.min_size)),
                cond_dim=min(case.cond_dim, self.max_cond_dim),
            ))
        return out

    # ------------------------------------------------------------------ device
    @pytest.mark.gpu
    def test_device(self):
        """Outputs follow the input's CUDA device and match the CPU values."""
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        for case in self.fixed_cases():
            conformance.check_device(self.make_energy, case, device="cuda")


class RegistryConformance(EnergyConformance):
    """Runs the conformance checks over registered built-in specs (one family, or all).

    Each example draws a :class:`~energycrf.testing.registry.Spec` of ``family`` and a case
    inside that spec's domain (its condition kinds and minimum size). Every spec is also run
    once on a fixed case by ``test_every_spec``, so none is left out by chance.
    """

    family: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        from . import registry

        names = [s.name for s in registry.specs(cls.family)]

        @pytest.mark.parametrize("spec_name", names)
        def test_every_spec(self, spec_name):
            spec = registry.get(spec_name)
            case = spec.adapt(Case(batch=2, channels=2, height=3, width=4, condition="pooled",
                                   seed=len(spec_name)))
            for check in conformance.CHECKS:
                self.run_check(check, (spec, case))

        cls.test_every_spec = test_every_spec

    def case_strategy(self, check: str):
        from . import registry

        def for_spec(spec):
            strategy = cases(
                max_channels=self.max_channels,
                max_batch=self.max_batch,
                min_size=max(self.min_size, spec.min_size),
                max_size=max(self.max_size, spec.min_size),
                conditions=spec.conditions,
                max_cond_dim=self.max_cond_dim,
            )
            return strategy.map(lambda case: (spec, case))

        return st.sampled_from(registry.specs(self.family)).flatmap(for_spec)

    def run_check(self, check: str, drawn) -> None:
        spec, case = drawn
        if check in self.skip_checks or (not spec.smooth and check in ("gradcheck", "majorizer")):
            return
        options = dict(self.check_options.get(check, {}))
        if check == "convexity_margin":
            options.setdefault("required", spec.builtin)
        conformance.CHECKS[check](spec, case, **options)

    def fixed_cases(self):
        return []

    @pytest.mark.gpu
    def test_device(self):
        """Every spec of the family on CUDA: outputs on the device, equal to the CPU values."""
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        from . import registry

        for spec in registry.specs(self.family):
            for case in DEFAULT_CASES:
                conformance.check_device(spec, spec.adapt(case), device="cuda")
