"""A labelled set of poster images rendered with PIL in a real TTF font: the calibration set of the
typography verifier, used by its tests and bench/verify.py.

Each case renders some text on a plain background and says whether the verifier should
flag it against the expected text (lane policy: case-sensitive, punctuation strict).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

WORDS = ["SUMMER", "SALE", "OPEN", "FRESH", "COFFEE", "NEW", "ARRIVALS", "MEGA", "DEALS", "TODAY", "LAUNCH",
         "NIGHT", "MARKET", "BAKERY", "GRAND", "OPENING", "WINTER", "BOOTS", "FREE", "DELIVERY"]  # fmt: skip


@dataclass
class Sample:
    kind: str
    expected: str
    rendered: str
    should_flag: bool
    image: Image.Image


def render(text: str, *, size=(640, 320), fg=(20, 24, 60), bg=(238, 228, 204), angle: float = 0.0, font_size=56):
    image = Image.new("RGB", size, bg)
    if text:
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=font_size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = (size[0] - (right - left)) / 2 - left
        y = (size[1] - (bottom - top)) / 2 - top
        draw.text((x, y), text, font=font, fill=fg)
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=bg)
    return image


def misspell(text: str, rng: random.Random) -> str:
    letters = [i for i, c in enumerate(text) if c.isalpha()]
    i = rng.choice(letters)
    replacement = rng.choice([c for c in "AEIOURSTLN" if c != text[i]])
    return text[:i] + replacement + text[i + 1 :]


def sample(kind: str, rng: random.Random) -> Sample:
    expected = " ".join(rng.sample(WORDS, 2))
    font_size = rng.choice([44, 52, 60])
    if kind == "correct":
        return Sample(kind, expected, expected, False, render(expected, font_size=font_size))
    if kind == "misspelt":
        wrong = misspell(expected, rng)
        return Sample(kind, expected, wrong, True, render(wrong, font_size=font_size))
    if kind == "missing":
        return Sample(kind, expected, "", True, render("", font_size=font_size))
    if kind == "extra":
        i = rng.randrange(len(expected))
        wrong = expected[:i] + rng.choice("XQZK") + rng.choice("XQZK") + expected[i:]
        return Sample(kind, expected, wrong, True, render(wrong, font_size=font_size))
    if kind == "wrong_case":
        wrong = expected.title()
        return Sample(kind, expected, wrong, True, render(wrong, font_size=font_size))
    if kind == "low_contrast":
        return Sample(kind, expected, expected, False, render(expected, fg=(150, 140, 120), font_size=font_size))
    if kind == "rotated":
        angle = rng.choice([-4, -3, 3, 4])
        return Sample(kind, expected, expected, False, render(expected, angle=angle, font_size=font_size))
    raise ValueError(kind)


KINDS = ["correct", "misspelt", "missing", "extra", "wrong_case", "low_contrast", "rotated"]


def labelled_set(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [sample(KINDS[i % len(KINDS)], rng) for i in range(n)]
