"""Typography verification: read the text rendered in an image and score it against the brief.

OCR is rapidocr (ONNX models bundled in the wheel, so it works offline), loaded once per
worker process. Each expected string gets a similarity (1 - normalized edit distance)
against the best candidate the OCR read: a whole line, all lines joined in reading order,
or, when the expected text appears word for word inside a longer line, that line (1.0).
Normalization (case, punctuation) follows the lane's policy; whitespace is always collapsed.
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings

QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|«([^»]+)»|(?:^|(?<=\s))\'([^\']+)\'(?=$|\s|[.,;:!?])')

# rapidocr's bundled models read Chinese and Latin script (with digits and punctuation).
SUPPORTED_SCRIPTS = ("LATIN", "CJK", "DIGIT")


def expected_texts(expected_text: str, prompt: str) -> list[str]:
    """The brief's text-that-must-appear plus every quoted string in its prompt, without repeats."""
    found = [expected_text.strip()] if expected_text.strip() else []
    for match in QUOTED.finditer(prompt):
        text = next(group for group in match.groups() if group is not None).strip()
        if text:
            found.append(text)
    return list(dict.fromkeys(found))


def unsupported_characters(text: str) -> list[str]:
    """Letters in scripts the OCR model cannot read."""
    bad = []
    for char in text:
        if not char.isalpha():
            continue
        name = unicodedata.name(char, "")
        if not any(script in name for script in SUPPORTED_SCRIPTS):
            bad.append(char)
    return bad


def normalize(text: str, *, case_sensitive: bool, ignore_punctuation: bool) -> str:
    text = unicodedata.normalize("NFKC", text)
    if ignore_punctuation:
        text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


@dataclass
class Line:
    text: str
    score: float
    box: list[list[float]]  # four [x, y] corners in image pixels


@dataclass
class StringScore:
    expected: str
    read: str
    similarity: float
    passed: bool
    box: list[list[float]] | None = None

    @property
    def edit_distance(self) -> float:
        return round(1 - self.similarity, 4)


@dataclass
class Reading:
    lines: list[Line]
    ocr_ms: float


@dataclass
class Verdict:
    status: str  # passed / flagged / not_applicable / error
    reason: str
    scores: list[StringScore] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    ocr_ms: float | None = None

    def details(self) -> dict:
        return {
            "scores": [asdict(s) | {"edit_distance": s.edit_distance} for s in self.scores],
            "lines": [asdict(line) for line in self.lines],
        }


class Reader:
    """The OCR engine of this process, loaded on first use; calls are serialized."""

    def __init__(self) -> None:
        # A rapidocr.RapidOCR once loaded. Any, not RapidOCR: rapidocr annotates its __call__ as returning any
        # stage's output (detection, classification, recognition or all) with every field Optional, where
        # with detection and recognition on, as here, it returns the full RapidOCROutput.
        self._engine: Any = None
        self._lock = threading.Lock()

    def read(self, image) -> Reading:
        with self._lock:
            if self._engine is None:
                from rapidocr import RapidOCR

                self._engine = RapidOCR(
                    params={
                        "Global.use_cls": False,
                        "Global.log_level": "critical",
                        "Det.limit_type": "max",
                        "Det.limit_side_len": 960,
                    }
                )
            started = time.perf_counter()
            result = self._engine(image.convert("RGB"))
            elapsed = (time.perf_counter() - started) * 1000
        lines = []
        if result.txts:
            for text, score, box in zip(result.txts, result.scores, result.boxes.tolist(), strict=True):
                lines.append(Line(text=text, score=float(score), box=[[float(x), float(y)] for x, y in box]))
        # Reading order: top to bottom, then left to right.
        lines.sort(key=lambda line: (round(min(p[1] for p in line.box) / 10), min(p[0] for p in line.box)))
        return Reading(lines=lines, ocr_ms=elapsed)


reader = Reader()


def score(
    expected: list[str],
    lines: list[Line],
    *,
    threshold: float,
    case_sensitive: bool,
    ignore_punctuation: bool,
) -> list[StringScore]:
    from rapidfuzz.distance import Levenshtein

    def norm(text: str) -> str:
        return normalize(text, case_sensitive=case_sensitive, ignore_punctuation=ignore_punctuation)

    # (normalized text, text as read, where it was read: None for all lines joined)
    candidates: list[tuple[str, str, list[list[float]] | None]] = [
        (norm(line.text), line.text, line.box) for line in lines
    ]
    if len(lines) > 1:
        joined = " ".join(line.text for line in lines)
        candidates.append((norm(joined), joined, None))
    scores = []
    for text in expected:
        want = norm(text)
        best = StringScore(expected=text, read="", similarity=0.0, passed=False)
        for got, raw, box in candidates:
            similarity = Levenshtein.normalized_similarity(want, got)
            # Word for word inside a longer line ("BIG SUMMER SALE TODAY" holds "SUMMER SALE").
            if similarity < 1.0 and re.search(rf"(?:^|\s){re.escape(want)}(?:\s|$)", got):
                similarity = 1.0
            if similarity > best.similarity:
                best = StringScore(expected=text, read=raw, similarity=round(similarity, 4), passed=False, box=box)
        best.passed = best.similarity >= threshold
        scores.append(best)
    return scores


def verify_image(image, expected: list[str], lane) -> Verdict:
    """Read an image and judge it against the expected strings under the lane's policy."""
    if not expected:
        return Verdict("not_applicable", "the brief expects no text")
    bad = sorted({char for text in expected for char in unsupported_characters(text)})
    if bad:
        return Verdict(
            "not_applicable",
            f"expected text uses characters the OCR model cannot read ({''.join(bad)}); "
            "supported: Latin and Chinese script, digits and punctuation",
        )
    if image.width * image.height > settings.VERIFY_MAX_PIXELS:
        return Verdict(
            "error",
            f"image is {image.width}x{image.height}, over the {settings.VERIFY_MAX_PIXELS:,} pixel limit for OCR",
        )
    reading = reader.read(image)
    scores = score(
        expected,
        reading.lines,
        threshold=lane.verify_threshold,
        case_sensitive=lane.verify_case_sensitive,
        ignore_punctuation=lane.verify_ignore_punctuation,
    )
    failing = [s for s in scores if not s.passed]
    if not failing:
        return Verdict("passed", "every expected string was read", scores, reading.lines, reading.ocr_ms)
    worst = min(failing, key=lambda s: s.similarity)
    if not worst.read:
        reason = f"missing: {worst.expected!r} was not found"
    else:
        reason = f"mismatch: expected {worst.expected!r}, read {worst.read!r} (similarity {worst.similarity:.2f})"
    return Verdict("flagged", reason, scores, reading.lines, reading.ocr_ms)


def overlay_text(image, text: str, box: list[list[float]] | None):
    """Auto-fix: paint the expected text, in a real TTF font, over the detected region (or a bottom band)."""
    from PIL import ImageDraw, ImageFont, ImageStat

    fixed = image.convert("RGB").copy()
    if box:
        left, top = min(p[0] for p in box), min(p[1] for p in box)
        right, bottom = max(p[0] for p in box), max(p[1] for p in box)
    else:
        left, right = fixed.width * 0.05, fixed.width * 0.95
        top, bottom = fixed.height * 0.78, fixed.height * 0.95
    pad = max(2.0, (bottom - top) * 0.15)
    region = (int(max(0, left - pad)), int(max(0, top - pad)), int(min(fixed.width, right + pad)),
              int(min(fixed.height, bottom + pad)))  # fmt: skip
    background = tuple(int(v) for v in ImageStat.Stat(fixed.crop(region)).median)
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    ink = (0, 0, 0) if luminance > 128 else (255, 255, 255)
    draw = ImageDraw.Draw(fixed)
    draw.rectangle(region, fill=background)
    # The largest size at which the text fits the region.
    width, height = region[2] - region[0], region[3] - region[1]
    size = max(8, int(height * 0.8))
    while size > 8:
        font = ImageFont.load_default(size=size)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
        if x1 - x0 <= width * 0.95 and y1 - y0 <= height * 0.9:
            break
        size -= 1
    font = ImageFont.load_default(size=size)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    x = region[0] + (width - (x1 - x0)) / 2 - x0
    y = region[1] + (height - (y1 - y0)) / 2 - y0
    draw.text((x, y), text, font=font, fill=ink)
    return fixed
