"""Varied captions per Fashion-MNIST class, with templates held out for evaluation.

Each class has several names ("sneaker", "running shoe", ...). Training captions combine
them with :data:`TRAIN_TEMPLATES`; evaluation prompts use :data:`HELDOUT_TEMPLATES`, which
the model never sees in training, so text alignment is measured on unseen wording.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from energycrf.apps.ldm.data import CLASS_NAMES

CLASS_SYNONYMS: dict[int, tuple[str, ...]] = {
    0: ("t-shirt", "tee", "short-sleeved top", "t-shirt top"),
    1: ("trouser", "pair of trousers", "pair of pants", "pair of slacks"),
    2: ("pullover", "sweater", "jumper", "knitted pullover"),
    3: ("dress", "summer dress", "frock", "long dress"),
    4: ("coat", "winter coat", "jacket", "overcoat"),
    5: ("sandal", "summer sandal", "open shoe", "strappy sandal"),
    6: ("shirt", "button-up shirt", "blouse", "collared shirt"),
    7: ("sneaker", "running shoe", "trainer", "sports shoe"),
    8: ("bag", "handbag", "purse", "tote bag"),
    9: ("ankle boot", "boot", "short boot", "leather ankle boot"),
}

TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a grayscale picture of a {}",
    "a {}",
    "a product photo of a {}",
    "a small image of a {}",
    "a black and white photo of a {}",
    "a picture showing a {}",
    "an image of a {} on a dark background",
)

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "a catalogue shot of a {}",
    "someone's {} photographed from above",
    "a low resolution photograph of a {}",
)


def _fill(template: str, name: str) -> str:
    text = template.format(name)
    # "a" before a vowel sound -> "an" (the templates all use "a {}")
    for art in ("a ", "A "):
        key = art + name
        if key in text and name[0] in "aeiou":
            text = text.replace(key, art[0] + "n " + name)
    return text


def captions_for_class(label: int, templates: Sequence[str] = TRAIN_TEMPLATES) -> list[str]:
    """All captions of class ``label`` (every synonym with every template)."""
    if label not in CLASS_SYNONYMS:
        raise ValueError(f"label must be in 0..{len(CLASS_NAMES) - 1}, got {label!r}")
    return [_fill(t, s) for t in templates for s in CLASS_SYNONYMS[label]]


def random_caption(label: int, rng: random.Random, templates: Sequence[str] = TRAIN_TEMPLATES) -> str:
    """One caption of class ``label`` drawn with ``rng``."""
    if label not in CLASS_SYNONYMS:
        raise ValueError(f"label must be in 0..{len(CLASS_NAMES) - 1}, got {label!r}")
    return _fill(rng.choice(list(templates)), rng.choice(CLASS_SYNONYMS[label]))


def evaluation_prompts(per_class: int = 1, seed: int = 0) -> list[tuple[str, int]]:
    """``(prompt, class)`` pairs from held-out templates only, ``per_class`` per class, deterministic."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = random.Random(seed)
    out = []
    for label in range(len(CLASS_NAMES)):
        pool = captions_for_class(label, HELDOUT_TEMPLATES)
        rng.shuffle(pool)
        out.extend((pool[k % len(pool)], label) for k in range(per_class))
    return out
