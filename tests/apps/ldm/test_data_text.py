"""Fashion-MNIST reader, captions and the MiniLM text context."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from energycrf.apps.ldm import captions, data
from tests.apps.ldm.conftest import needs_data, needs_text


def _write_idx(tmp_path, n=5, rows=28, cols=28, split="train"):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    labs = rng.integers(0, 10, size=n, dtype=np.uint8)
    img_name, lab_name = data._FILES[split]
    hdr = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + rows.to_bytes(4, "big") + cols.to_bytes(4, "big")
    with gzip.open(tmp_path / img_name, "wb") as f:
        f.write(hdr + imgs.tobytes())
    with gzip.open(tmp_path / lab_name, "wb") as f:
        f.write((2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labs.tobytes())
    return imgs, labs


def test_reader_round_trips_idx_files(tmp_path):
    imgs, labs = _write_idx(tmp_path, n=7)
    x, y = data.load_fashion_mnist("train", root=tmp_path)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labs.astype(np.int64))


def test_reader_rejects_bad_magic_and_truncation(tmp_path):
    _write_idx(tmp_path)
    img = tmp_path / data._FILES["train"][0]
    raw = gzip.open(img).read()
    with gzip.open(img, "wb") as f:
        f.write((1234).to_bytes(4, "big") + raw[4:])
    with pytest.raises(ValueError, match="magic 2051"):
        data.load_fashion_mnist("train", root=tmp_path)
    with gzip.open(img, "wb") as f:
        f.write(raw[:-3])
    with pytest.raises(ValueError, match="bytes of images"):
        data.load_fashion_mnist("train", root=tmp_path)


def test_missing_files_name_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        data.load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("validation", root=tmp_path)


def test_model_range_round_trip():
    u8 = np.random.default_rng(1).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    x = data.to_model_range(u8)
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.all(x[..., :2, :] == -1) and torch.all(x[..., :, -2:] == -1)
    back = data.from_model_range(x)
    torch.testing.assert_close(back[:, 0] * 255, torch.as_tensor(u8).float(), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="size"):
        data.to_model_range(u8, size=20)


@needs_data
def test_real_fashion_mnist_splits():
    x, y = data.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 1000))
    x, y = data.load_fashion_mnist("train")
    assert x.shape == (60000, 28, 28)
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))


def test_captions_cover_classes_and_holdout_is_disjoint():
    train_caps = {c for k in range(10) for c in captions.captions_for_class(k)}
    held = captions.evaluation_prompts(per_class=3)
    assert len(held) == 30 and sorted({k for _, k in held}) == list(range(10))
    assert not any(p in train_caps for p, _ in held)
    # every training caption names a synonym of its class, and "an" precedes vowels
    assert "a photo of an ankle boot" in captions.captions_for_class(9)
    for k in range(10):
        assert all(any(s in c for s in captions.CLASS_SYNONYMS[k]) for c in captions.captions_for_class(k))
    with pytest.raises(ValueError, match="label"):
        captions.captions_for_class(10)
    assert captions.evaluation_prompts(2, seed=5) == captions.evaluation_prompts(2, seed=5)


@needs_text
def test_text_context_shapes_and_semantics():
    from energycrf.apps.ldm import text

    e = text.encode(["a photo of a sneaker", "a bag"])
    assert e.shape == (2, text.MAX_LENGTH, text.EMBED_DIM) and e.dtype == torch.float32
    assert torch.isfinite(e).all()
    # same prompt -> same states (deterministic, eval mode); different prompts differ
    torch.testing.assert_close(text.encode("a bag")[0], e[1])
    assert not torch.allclose(e[0], e[1])
    s = text.sentence_embedding(["a photo of a sneaker", "a running shoe", "a handbag"])
    assert s[0] @ s[1] > s[1] @ s[2]  # synonyms are closer than different classes
    with pytest.raises(TypeError, match="prompts"):
        text.encode([1, 2])
