"""The files LatentCRF reads and writes: energycrf 0.1's directories (the shipped CRFs, the old
writer's checksummed ones), config entries it does not know, and the same files without diffusers."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import energycrf
from energycrf.integrations.bundle import CRF_PLAN_FILE, load_crf, read_plan, save_crf
from energycrf.integrations.plan import CorrectorPlan
from energycrf.io import IntegrityError, write_pretrained
from energycrf.learned.latent_crf import LatentCRF
from energycrf.learned.pretrained import LEGACY_WEIGHTS_NAME, WEIGHTS_NAME

ROOT = Path(energycrf.__file__).parent
SHIPPED = sorted(p.parent for p in (ROOT / "pretrained").rglob("config.json")
                 if json.loads(p.read_text()).get("_class_name") == "LatentCRF")


def _layer(seed=0, **kwargs):
    torch.manual_seed(seed)
    crf = LatentCRF(**{"channels": 4, "cond_dim": 8, "num_iterations": 2, "num_filters": 3, "hidden_channels": 8,
                       "attention_dim": 8, **kwargs})
    with torch.no_grad():
        for p in crf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    crf.train()
    crf(torch.randn(3, 4, 8, 8), torch.randn(3, 5, 8))
    return crf.eval()


def _inputs(cond_dim=8, channels=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, channels, 8, 8, generator=g), torch.randn(2, 5, cond_dim, generator=g) if cond_dim else None


def _old_save(crf, directory, **extra):
    """What ``crf.save_pretrained(directory)`` wrote in energycrf 0.1 (config.json + model.safetensors)."""
    header = {"_class_name": "LatentCRF", "_energycrf_version": "0.1.0", **dict(crf.config), **extra}
    return write_pretrained(directory, header, crf.state_dict())


def test_every_shipped_crf_loads_as_its_files_say():
    assert len(SHIPPED) >= 5  # the splice CRF, the correctors, the denoisers' LatentCRFs
    for directory in SHIPPED:
        # the release before the diffusers-native layer wrote model.safetensors, this one diffusers' name: one of them
        files = [directory / n for n in (LEGACY_WEIGHTS_NAME, WEIGHTS_NAME) if (directory / n).is_file()]
        assert len(files) == 1, directory
        config = json.loads((directory / "config.json").read_text())
        by_hand = LatentCRF(**{k: v for k, v in config.items() if not k.startswith("_")})
        by_hand.load_state_dict(load_file(str(files[0])), strict=True)
        loaded = LatentCRF.from_pretrained(directory)
        assert not loaded.training and loaded.config == by_hand.config
        x, c = _inputs(config["cond_dim"], config["channels"])
        assert torch.equal(loaded(x, c), by_hand.eval()(x, c)), directory
        half = LatentCRF.from_pretrained(directory, torch_dtype=torch.float64)
        torch.testing.assert_close(half(x.double(), c.double() if c is not None else None).float(), loaded(x, c))


def test_the_shipped_splice_crf_keeps_its_plan():
    from energycrf.apps.ldm import pretrained

    crf = pretrained.load_crf(pretrained.SPLICE_CRF)
    assert isinstance(crf, LatentCRF) and crf.plan is not None and not crf.training


def test_a_checkpoint_of_the_old_writer_loads_is_checked_and_is_replaced_on_save(tmp_path):
    crf = _layer()
    _old_save(crf, tmp_path)
    (tmp_path / CRF_PLAN_FILE).write_text(json.dumps(CorrectorPlan("dpmpp", "trailing", 2).to_dict()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", LEGACY_WEIGHTS_NAME, CRF_PLAN_FILE]
    x, c = _inputs()
    assert torch.equal(LatentCRF.from_pretrained(tmp_path)(x, c), crf(x, c))
    assert load_crf(tmp_path).plan == CorrectorPlan("dpmpp", "trailing", 2)

    # a fp16 variant beside it keeps the old weights (same config, recorded checksum)
    half = _layer().half()
    half.save_pretrained(tmp_path, variant="fp16")
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", LEGACY_WEIGHTS_NAME, CRF_PLAN_FILE,
                                                   "diffusion_pytorch_model.fp16.safetensors"}
    assert torch.equal(LatentCRF.from_pretrained(tmp_path)(x, c), crf(x, c))
    # a save without a variant puts the weights under diffusers' name; the plan stays
    other = _layer(seed=3)
    other.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", WEIGHTS_NAME, CRF_PLAN_FILE,
                                                   "diffusion_pytorch_model.fp16.safetensors"}
    assert torch.equal(LatentCRF.from_pretrained(tmp_path)(x, c), other(x, c))
    assert read_plan(tmp_path) == CorrectorPlan("dpmpp", "trailing", 2)

    _old_save(crf, tmp_path / "tampered")
    weights = tmp_path / "tampered" / LEGACY_WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=str(weights) + ".*sha256"):
        LatentCRF.from_pretrained(tmp_path / "tampered")


def test_a_changed_config_is_refused(tmp_path):
    _layer().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_iterations"] = 7
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match="config.json.*differs from the digest"):
        LatentCRF.from_pretrained(tmp_path)


def test_config_entries_the_layer_does_not_take(tmp_path):
    crf = _layer()
    _old_save(crf, tmp_path / "newer", colour="red")
    with pytest.raises(ValueError, match=r"config\.json.*does not take: \['colour'\].*newer energycrf"):
        LatentCRF.from_pretrained(tmp_path / "newer")
    # entries named _... are metadata (diffusers writes some): ignored
    _old_save(crf, tmp_path / "meta", _name_or_path="somewhere", _use_default_values=["return_all"])
    x, c = _inputs()
    assert torch.equal(LatentCRF.from_pretrained(tmp_path / "meta")(x, c), crf(x, c))
    # an entry missing (a config older than the argument): the constructor's default
    directory = tmp_path / "older"
    directory.mkdir()
    config = {k: v for k, v in crf.config.items() if k != "return_all"}
    (directory / "config.json").write_text(json.dumps({"_class_name": "LatentCRF", **config}))
    save_file({k: v.contiguous() for k, v in crf.state_dict().items()}, str(directory / WEIGHTS_NAME))
    assert LatentCRF.from_pretrained(directory).config["return_all"] is False


def test_save_crf_writes_the_layout_of_save_pretrained(tmp_path):
    crf = _layer()
    plan = CorrectorPlan("unipc", "trailing", 3)
    save_crf(crf, tmp_path, plan, extra_files={"README.md": "hi\n"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", WEIGHTS_NAME, CRF_PLAN_FILE]
    crf.save_pretrained(tmp_path)  # the plan and the README stay
    loaded = load_crf(tmp_path)
    x, c = _inputs()
    assert loaded.plan == plan and torch.equal(loaded(x, c), crf(x, c)) and (tmp_path / "README.md").is_file()
    with pytest.raises(TypeError, match="LatentCRF"):
        save_crf(torch.nn.Linear(2, 2), tmp_path / "x", plan)


def _run(code: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *argv], env=env, capture_output=True,
                          text=True, timeout=300)


WITHOUT_DIFFUSERS = """
    import sys
    sys.modules["diffusers"] = None  # as if it were not installed: importing it raises ImportError
    from pathlib import Path
    import torch
    from safetensors.torch import load_file, save_file
    import energycrf as ec
    from energycrf.energies import Pairwise, Unary
    from energycrf.learned import pretrained

    here = Path(sys.argv[1])
    assert not pretrained.HAS_DIFFUSERS and pretrained.ModelMixin is pretrained.LocalModelMixin
    assert not any(c.__module__.startswith("diffusers") for c in ec.LatentCRF.__mro__)
    assert issubclass(ec.LatentCRF, pretrained.LocalModelMixin)
    assert issubclass(ec.LatentCRF, pretrained.LocalConfigMixin)
    io = load_file(str(here / "io.safetensors"))
    # written with diffusers, read without it
    crf = ec.LatentCRF.from_pretrained(here, subfolder="with")
    assert not crf.training and type(crf.config).__name__ == "FrozenConfig" and crf.config.num_iterations == 2
    assert torch.equal(crf(io["x"], io["c"]), io["y"])
    try:
        crf.config["num_iterations"] = 3
        raise SystemExit("the config is writable")
    except TypeError:
        pass
    assert ec.LatentCRF.from_config(crf.config).config == crf.config == ec.LatentCRF(**crf.config).config
    wide = ec.LatentCRF.from_pretrained(here / "with", torch_dtype=torch.float64, variant="fp16")
    assert wide.dtype == torch.float64 and wide.device == torch.device("cpu")
    try:
        ec.LatentCRF.from_energy(Unary() + Pairwise(4)).config
        raise SystemExit("from_energy has a config")
    except TypeError:
        pass
    # written without diffusers, with a variant, read by the parent with diffusers
    crf.save_pretrained(here / "without")
    crf.half().save_pretrained(here / "without", variant="fp16")
    assert "diffusers" not in sys.modules or sys.modules["diffusers"] is None
    print("ok")
"""


def test_the_layer_works_the_same_without_diffusers(tmp_path):
    pytest.importorskip("diffusers")
    crf = _layer()
    crf.save_pretrained(tmp_path / "with")
    copy.deepcopy(crf).half().save_pretrained(tmp_path / "with", variant="fp16")
    x, c = _inputs()
    save_file({"x": x, "c": c, "y": crf(x, c)}, str(tmp_path / "io.safetensors"))
    proc = _run(WITHOUT_DIFFUSERS, str(tmp_path))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    # the same files, but for diffusers' version
    written = {p.name for p in (tmp_path / "without").iterdir()}
    assert written == {p.name for p in (tmp_path / "with").iterdir()}
    config = json.loads((tmp_path / "without" / "config.json").read_text())
    assert "_diffusers_version" not in config
    assert {k: v for k, v in config.items() if not k.startswith("_")} == dict(crf.config)
    assert torch.equal(LatentCRF.from_pretrained(tmp_path / "without")(x, c), crf(x, c))
    half = LatentCRF.from_pretrained(tmp_path / "without", variant="fp16", torch_dtype=torch.float16)
    assert torch.equal(half(x.half(), c.half()), crf.half()(x.half(), c.half()))


def test_the_learned_package_imports_diffusers_only_for_the_latent_crf():
    proc = _run("""
        import sys
        import energycrf.learned
        from energycrf.learned.unrolled import Unrolled
        assert "diffusers" not in sys.modules, "energycrf.learned imported diffusers"
        from energycrf.learned import LatentCRF
        import diffusers
        assert issubclass(LatentCRF, diffusers.ModelMixin) and energycrf.learned.LatentCRF is LatentCRF
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
