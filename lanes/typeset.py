"""Text set in a real TTF font with PIL: auto-fix's overlay, and the labelled set of poster
images that calibrates the typography verifier (used by its tests and bench/verify.py).

Each case of the set renders some text on a plain background and says whether the verifier
should flag it against the expected text (lane policy: case-sensitive, punctuation strict).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageStat

# Overlay text is drawn this big, then scaled into place: antialiased at any final size.
DRAW_SIZE = 64
# Glyphs shorter than this (pixels of the image) are misread by OCR even after upscaling
# (measured on 32x32 and 64x64 drafts: 4 px fails, 5-6 px reads); text that would be set
# smaller gets more room, up to LEGIBLE_PX tall, or is narrowed.
MIN_TEXT_PX = 6
LEGIBLE_PX = 8
MAX_LINES = 4


@dataclass
class Block:
    """Lines of text drawn at DRAW_SIZE as an alpha mask."""

    mask: Image.Image
    lines: int
    glyph_height: int  # the tallest line's ink

    def scale_into(self, width: float, height: float) -> float:
        return min(width / self.mask.width, height / self.mask.height)


def line_breaks(text: str) -> list[list[str]]:
    """The text on one line, then its words on 2 to MAX_LINES lines, each as even as it can be."""
    words = text.split()
    layouts = [[" ".join(words)]]
    for count in range(2, min(len(words), MAX_LINES) + 1):
        best: list[str] | None = None
        for cuts in itertools.combinations(range(1, len(words)), count - 1):
            bounds = (0, *cuts, len(words))
            lines = [" ".join(words[a:b]) for a, b in itertools.pairwise(bounds)]
            if best is None or max(map(len, lines)) < max(map(len, best)):
                best = lines
        if best:
            layouts.append(best)
    return layouts


def draw_block(lines: list[str]) -> Block:
    font = ImageFont.load_default(size=DRAW_SIZE)
    boxes = [font.getbbox(line) for line in lines]
    glyph = round(max(bottom - top for _, top, _, bottom in boxes))
    gap = round(glyph * 0.35)
    width = round(max(right - left for left, _, right, _ in boxes))
    mask = Image.new("L", (width, glyph * len(lines) + gap * (len(lines) - 1)), 0)
    draw = ImageDraw.Draw(mask)
    for i, (line, (left, top, right, bottom)) in enumerate(zip(lines, boxes, strict=True)):
        x = (width - (right - left)) / 2 - left
        y = i * (glyph + gap) + (glyph - (bottom - top)) / 2 - top
        draw.text((x, y), line, font=font, fill=255)
    return Block(mask, len(lines), glyph)


def overlay_text(image: Image.Image, text: str, box: list[list[float]] | None) -> Image.Image:
    """Auto-fix: paint the expected text over the detected region (or a band at the foot),
    as large as fits; where that would be too small to read, the region grows (centred on
    where it was, inside the image) and the text is narrowed rather than set under MIN_TEXT_PX."""
    fixed = image.convert("RGB").copy()
    width, height = fixed.size
    if box:
        left, top = min(p[0] for p in box), min(p[1] for p in box)
        right, bottom = max(p[0] for p in box), max(p[1] for p in box)
    else:
        left, right = width * 0.05, width * 0.95
        top, bottom = height * 0.78, height * 0.95
    blocks = [draw_block(lines) for lines in line_breaks(text)]
    # The layout whose letters come out tallest in the region; fewer lines on a tie.
    block = max(
        blocks, key=lambda b: (b.scale_into((right - left) * 0.95, (bottom - top) * 0.9) * b.glyph_height, -b.lines)
    )
    scale_x = scale_y = block.scale_into((right - left) * 0.95, (bottom - top) * 0.9)
    if scale_y * block.glyph_height < MIN_TEXT_PX:

        def legible(b: Block) -> float:
            return min(b.scale_into(width * 0.95, height * 0.9), LEGIBLE_PX / b.glyph_height)

        block = max(blocks, key=lambda b: (legible(b) * b.glyph_height, -b.lines))
        scale_x = legible(block)
        scale_y = min(max(scale_x, MIN_TEXT_PX / block.glyph_height), height * 0.9 / block.mask.height)
        grow_w, grow_h = block.mask.width * scale_x / 0.95, block.mask.height * scale_y / 0.9
        centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
        left, right = centre_x - max(grow_w, right - left) / 2, centre_x + max(grow_w, right - left) / 2
        top, bottom = centre_y - max(grow_h, bottom - top) / 2, centre_y + max(grow_h, bottom - top) / 2
        shift_x = max(0.0, -left) - max(0.0, right - width)
        shift_y = max(0.0, -top) - max(0.0, bottom - height)
        left, right, top, bottom = left + shift_x, right + shift_x, top + shift_y, bottom + shift_y
    text_w = max(1, round(block.mask.width * scale_x))
    text_h = max(1, round(block.mask.height * scale_y))
    pad = max(1.0, (bottom - top) * 0.1)
    region = (int(max(0, left - pad)), int(max(0, top - pad)), int(min(width, right + pad + 0.5)),
              int(min(height, bottom + pad + 0.5)))  # fmt: skip
    background = tuple(int(v) for v in ImageStat.Stat(fixed.crop(region)).median)
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    # Keep the region's colour, but far enough from the ink to read (a busy region's median is mid-grey).
    if luminance > 128:
        ink, lift = (0, 0, 0), max(0.0, (170 - luminance) / (255 - luminance))
        background = tuple(round(v + (255 - v) * lift) for v in background)
    else:
        ink = (255, 255, 255)
        background = tuple(round(v * min(1.0, 90 / max(luminance, 1))) for v in background)
    ImageDraw.Draw(fixed).rectangle(region, fill=background)
    mask = block.mask.resize((text_w, text_h), Image.Resampling.LANCZOS)
    x = round((region[0] + region[2] - text_w) / 2)
    y = round((region[1] + region[3] - text_h) / 2)
    fixed.paste(ink, (x, y), mask)
    return fixed


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


def render_small(text: str, side: int, *, fg=(20, 24, 60), bg=(238, 228, 204)) -> Image.Image:
    """A side x side poster (a preview or draft) with the text set as large as it fits, on up to MAX_LINES lines."""
    blocks = [draw_block(lines) for lines in line_breaks(text)]
    block = max(blocks, key=lambda b: (b.scale_into(side * 0.92, side * 0.8) * b.glyph_height, -b.lines))
    scale = block.scale_into(side * 0.92, side * 0.8)
    mask = block.mask.resize((max(1, round(block.mask.width * scale)), max(1, round(block.mask.height * scale))),
                             Image.Resampling.LANCZOS)  # fmt: skip
    image = Image.new("RGB", (side, side), bg)
    image.paste(fg, ((side - mask.width) // 2, (side - mask.height) // 2), mask)
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
    if kind == "small":
        return Sample(kind, expected, expected, False, render_small(expected, rng.choice([32, 64])))
    if kind == "small_misspelt":
        wrong = misspell(expected, rng)
        return Sample(kind, expected, wrong, True, render_small(wrong, rng.choice([32, 64])))
    raise ValueError(kind)


KINDS = ["correct", "misspelt", "missing", "extra", "wrong_case", "low_contrast", "rotated", "small", "small_misspelt"]


def labelled_set(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    return [sample(KINDS[i % len(KINDS)], rng) for i in range(n)]
