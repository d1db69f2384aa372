"""LatentCRF as a diffusers model: ModelMixin + ConfigMixin, diffusers' save/load arguments and
file names (variant, subfolder, torch_dtype, device_map), and a pipeline component.

The layer-without-diffusers and old-checkpoint checks are in test_pretrained_formats.py."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from energycrf.energies import Pairwise, Unary
from energycrf.energies.kernels import LongRangeKernel
from energycrf.io import IntegrityError
from energycrf.learned.latent_crf import LatentCRF
from energycrf.learned.pretrained import WEIGHTS_NAME

diffusers = pytest.importorskip("diffusers")

FP16 = "diffusion_pytorch_model.fp16.safetensors"


def _layer(seed=0, **kwargs):
    """A LatentCRF with moved weights and batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    kwargs = {"channels": 4, "cond_dim": 8, "num_iterations": 2, "num_filters": 3, "hidden_channels": 8,
              "attention_dim": 8, **kwargs}
    crf = LatentCRF(**kwargs)
    with torch.no_grad():
        for p in crf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    crf.train()
    crf(torch.randn(3, 4, 8, 8), torch.randn(3, 5, 8) if kwargs.get("cond_dim") else None)
    return crf.eval()


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g).to(dtype), torch.randn(2, 5, 8, generator=g).to(dtype)


def _floating(module):
    return {t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()}


def test_the_layer_is_a_diffusers_model_with_its_arguments_registered():
    kernel = LongRangeKernel(sigma=2.0, weight=0.5, boundary="zeros")
    crf = LatentCRF(channels=4, cond_dim=8, num_iterations=3, kernel=kernel)
    assert isinstance(crf, diffusers.ModelMixin) and isinstance(crf, diffusers.ConfigMixin)
    config = crf.config
    assert isinstance(config, diffusers.configuration_utils.FrozenDict)
    assert config["num_iterations"] == 3 and config.num_iterations == 3 and config["cond_dim"] == 8
    assert config["kernel"] == {"type": "LongRangeKernel", "sigma": 2.0, "weight": 0.5, "boundary": "zeros"}
    json.dumps(dict(config))  # JSON values only: the kernel is its spec
    with pytest.raises(Exception):  # diffusers' FrozenDict
        config.pop("num_iterations")
    for rebuilt in (LatentCRF.from_config(config), LatentCRF(**config)):
        assert rebuilt.config == config
        shapes = {k: v.shape for k, v in crf.state_dict().items()}
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert crf.dtype == torch.float32 and crf.device == torch.device("cpu")
    with pytest.raises(TypeError, match="from_energy"):
        LatentCRF.from_energy(Unary() + Pairwise(4)).config


def test_diffusers_reads_the_config_file(tmp_path):
    crf = _layer()
    crf.save_pretrained(tmp_path)
    config = LatentCRF.load_config(tmp_path)  # diffusers' reader: the metadata comes with it
    assert config["_class_name"] == "LatentCRF" and "_integrity" in config
    rebuilt = LatentCRF.from_config(config)
    assert rebuilt.config == crf.config and not any(k.startswith("_") for k in rebuilt.config)


def test_a_dtype_cast_is_a_plain_module_cast(capfd):
    crf = _layer()
    x, c = _inputs(torch.float64)
    reference = copy.deepcopy(crf).double()(x, c)
    capfd.readouterr()
    assert crf.to(torch.float64) is crf and _floating(crf) == {torch.float64}
    assert crf.to(dtype=torch.float64) is crf and "float32" not in capfd.readouterr().err  # no diffusers 0.42 notice
    assert torch.equal(crf(x, c), reference)
    assert crf.to("cpu", torch.float32).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_torch_dtype_loads_the_layer_in_that_dtype(tmp_path, dtype):
    crf = _layer(cond_dim=8)
    crf.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS_NAME]
    loaded = LatentCRF.from_pretrained(tmp_path, torch_dtype=dtype)
    assert _floating(loaded) == {dtype} and not loaded.training and loaded.dtype == dtype
    x, c = _inputs(dtype)
    assert torch.equal(loaded(x, c), copy.deepcopy(crf).to(dtype)(x, c))
    assert _floating(LatentCRF.from_pretrained(tmp_path, dtype=dtype)) == {dtype}  # diffusers' newer name
    default = LatentCRF.from_pretrained(tmp_path)
    assert _floating(default) == {torch.float32}
    x, c = _inputs()
    assert torch.equal(default(x, c), crf(x, c))


def test_variants_sit_beside_the_default_weights(tmp_path):
    crf = _layer()
    crf.save_pretrained(tmp_path)
    half = copy.deepcopy(crf).half()
    half.save_pretrained(tmp_path, variant="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", FP16, WEIGHTS_NAME]
    assert set(json.loads((tmp_path / "config.json").read_text())["_integrity"]) == {"config", WEIGHTS_NAME, FP16}
    x, c = _inputs(torch.float16)
    fp16 = LatentCRF.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)
    assert torch.equal(fp16(x, c), half(x, c))
    upcast = LatentCRF.from_pretrained(tmp_path, variant="fp16")  # no torch_dtype: float32, as diffusers does
    assert _floating(upcast) == {torch.float32}
    assert all(torch.equal(a, b.float()) for a, b in zip(upcast.state_dict().values(), half.state_dict().values()))
    x, c = _inputs()
    assert torch.equal(LatentCRF.from_pretrained(tmp_path)(x, c), crf(x, c))

    # new weights for the same config: the fp16 file stays, still checked; a new config removes it
    other = _layer(seed=5)
    other.save_pretrained(tmp_path)
    assert torch.equal(LatentCRF.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16)(*_inputs(
        torch.float16)), half(*_inputs(torch.float16)))
    assert torch.equal(LatentCRF.from_pretrained(tmp_path)(x, c), other(x, c))
    _layer(num_iterations=4).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS_NAME]
    with pytest.raises(FileNotFoundError, match="fp16"):
        LatentCRF.from_pretrained(tmp_path, variant="fp16")


def test_a_missing_variant_names_the_files_there(tmp_path):
    _layer().half().save_pretrained(tmp_path, variant="fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", FP16]
    with pytest.raises(FileNotFoundError, match=r"no 'diffusion_pytorch_model\.safetensors'.*fp16.*variant"):
        LatentCRF.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ema"):
        LatentCRF.from_pretrained(tmp_path, variant="ema")
    for bad in ("../fp16", "", "fp.16", 16):
        with pytest.raises(ValueError, match="variant"):
            _layer().save_pretrained(tmp_path / "x", variant=bad)
    assert not (tmp_path / "x").exists()


def test_a_variant_file_that_the_config_does_not_record_is_refused(tmp_path):
    crf = _layer()
    crf.save_pretrained(tmp_path / "a")
    crf.half().save_pretrained(tmp_path / "b", variant="fp16")
    (tmp_path / "a" / FP16).write_bytes((tmp_path / "b" / FP16).read_bytes())  # copied in by hand
    with pytest.raises(IntegrityError, match=r"fp16\.safetensors.*not one of the weights files"):
        LatentCRF.from_pretrained(tmp_path / "a", variant="fp16")
    data = bytearray((tmp_path / "b" / FP16).read_bytes())
    data[-1] ^= 0x01
    (tmp_path / "b" / FP16).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"fp16\.safetensors.*sha256"):
        LatentCRF.from_pretrained(tmp_path / "b", variant="fp16")


def test_subfolder_and_the_bundles_folder(tmp_path):
    crf = _layer()
    crf.save_pretrained(tmp_path / "pipe" / "crf")
    x, c = _inputs()
    assert torch.equal(LatentCRF.from_pretrained(tmp_path / "pipe", subfolder="crf")(x, c), crf(x, c))
    assert torch.equal(LatentCRF.from_pretrained(str(tmp_path / "pipe"), subfolder="crf")(x, c), crf(x, c))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        LatentCRF.from_pretrained(tmp_path / "pipe", subfolder="unet")
    with pytest.raises(ValueError, match="subfolder"):
        LatentCRF.from_pretrained(tmp_path / "pipe", subfolder=str(tmp_path / "pipe" / "crf"))


class _CRFPipeline(diffusers.DiffusionPipeline):
    """The smallest pipeline with a LatentCRF component."""

    def __init__(self, crf):
        super().__init__()
        self.register_modules(crf=crf)


def test_a_pipeline_saves_and_loads_its_crf_component(tmp_path):
    crf = _layer()
    _CRFPipeline(crf).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["crf"] == ["energycrf.learned.latent_crf", "LatentCRF"]
    assert sorted(p.name for p in (tmp_path / "crf").iterdir()) == ["config.json", WEIGHTS_NAME]
    x, c = _inputs()
    pipe = _CRFPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert type(pipe.crf) is LatentCRF and not pipe.crf.training and torch.equal(pipe.crf(x, c), crf(x, c))
    half = _CRFPipeline.from_pretrained(tmp_path, dtype=torch.float16, local_files_only=True)
    assert _floating(half.crf) == {torch.float16}
    half.save_pretrained(tmp_path, variant="fp16")
    assert sorted(p.name for p in (tmp_path / "crf").iterdir()) == ["config.json", FP16, WEIGHTS_NAME]
    again = _CRFPipeline.from_pretrained(tmp_path, variant="fp16", dtype=torch.float16, local_files_only=True)
    x16, c16 = _inputs(torch.float16)
    assert torch.equal(again.crf(x16, c16), half.crf(x16, c16))
    assert torch.equal(LatentCRF.from_pretrained(tmp_path, subfolder="crf")(x, c), crf(x, c))


def test_loading_options(tmp_path):
    crf = _layer()
    crf.save_pretrained(tmp_path)
    x, c = _inputs()
    for where in ({"device_map": "cpu"}, {"device_map": torch.device("cpu")}, {"device_map": {"": "cpu"}},
                  {"map_location": "cpu", "device_map": "cpu"}, {"map_location": torch.device("cpu")}):
        assert LatentCRF.from_pretrained(tmp_path, **where).device == torch.device("cpu")
    # the download and memory options of ModelMixin.from_pretrained change nothing for a local directory
    ignored = LatentCRF.from_pretrained(tmp_path, cache_dir=str(tmp_path / "cache"), local_files_only=True,
                                        low_cpu_mem_usage=False, use_safetensors=True, revision="main",
                                        disable_mmap=True, max_memory=None, offload_folder=None)
    assert torch.equal(ignored(x, c), crf(x, c)) and not (tmp_path / "cache").exists()
    model, info = LatentCRF.from_pretrained(tmp_path, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    assert LatentCRF.from_pretrained(directory=tmp_path).config == crf.config  # energycrf 0.1's keyword
    assert LatentCRF.from_pretrained(tmp_path, num_iterations=4, return_all=True)(x, c).shape == (4, 2, 4, 8, 8)

    refused = [({"device_map": "auto"}, ValueError, "one device"), ({"device_map": {"unet": 0}}, ValueError, "one"),
               ({"device_map": -1}, ValueError, ">= 0"), ({"device_map": 1.5}, TypeError, "device_map"),
               ({"map_location": "nowhere"}, ValueError, "map_location"),
               ({"map_location": "cpu", "device_map": "meta"}, ValueError, "disagree"),
               ({"torch_dtype": torch.int8}, TypeError, "torch_dtype"),
               ({"torch_dtype": "float16"}, TypeError, "dtype"),
               ({"torch_dtype": torch.float16, "dtype": torch.float64}, ValueError, "disagree"),
               ({"use_safetensors": False}, ValueError, "never pickle"), ({"from_flax": True}, ValueError, "flax"),
               ({"quantization_config": {"bits": 4}}, ValueError, "quantized"),
               ({"ignore_mismatched_sizes": True}, ValueError, "exactly"),
               ({"channels": 3}, TypeError, "override"), ({"colour": "red"}, TypeError, "unexpected.*colour")]
    for kwargs, error, match in refused:
        with pytest.raises(error, match=match):
            LatentCRF.from_pretrained(tmp_path, **kwargs)


def test_saving_options(tmp_path):
    crf = _layer()
    assert crf.save_pretrained(tmp_path / "a", max_shard_size="1KB", safe_serialization=True) == tmp_path / "a"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", WEIGHTS_NAME]  # never sharded
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["_class_name"] == "LatentCRF" and config["_diffusers_version"] == diffusers.__version__
    assert {k: v for k, v in config.items() if not k.startswith("_")} == dict(crf.config)
    assert crf.save_pretrained(tmp_path / "b", is_main_process=False) == tmp_path / "b"
    assert not (tmp_path / "b").exists()
    for kwargs, error, match in [({"safe_serialization": False}, ValueError, "never pickle"),
                                 ({"push_to_hub": True}, ValueError, "uploaded"),
                                 ({"save_function": torch.save}, ValueError, "save_function"),
                                 ({"use_flashpack": True}, ValueError, "flashpack"),
                                 ({"colour": "red"}, TypeError, "unexpected.*colour")]:
        with pytest.raises(error, match=match):
            crf.save_pretrained(tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


@pytest.mark.gpu
def test_device_map_puts_the_layer_on_the_accelerator(tmp_path):
    crf = _layer()
    crf.save_pretrained(tmp_path)
    gpu = LatentCRF.from_pretrained(tmp_path, device_map="cuda", torch_dtype=torch.float16)
    assert gpu.device.type == "cuda" and _floating(gpu) == {torch.float16}
    x, c = _inputs()
    out = gpu(x.cuda().half(), c.cuda().half())
    assert out.device.type == "cuda" and out.dtype == torch.float16
    torch.testing.assert_close(out.float().cpu(), crf(x, c), atol=2e-2, rtol=2e-2)
    assert LatentCRF.from_pretrained(tmp_path, device_map={"": 0}).device == torch.device("cuda", 0)
    on_gpu = LatentCRF.from_pretrained(tmp_path, map_location="cuda")
    assert on_gpu.dtype == torch.float32
    torch.testing.assert_close(on_gpu(x.cuda(), c.cuda()).cpu(), crf.cuda()(x.cuda(), c.cuda()).cpu(),
                               rtol=1e-6, atol=1e-6)
