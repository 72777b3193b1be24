"""Typography verification: read the text rendered in an image and score it against the brief.

OCR is rapidocr (ONNX models bundled in the wheel, so it works offline), loaded once per
worker process. Each expected string gets a similarity (1 - normalized edit distance)
against the best candidate the OCR read: a whole line, all lines joined in reading order,
or, when the expected text appears word for word inside a longer line, that line (1.0).
Normalization (case, punctuation) follows the lane's policy; whitespace is always collapsed.
"""

from __future__ import annotations

import math
import re
import threading
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from PIL import Image

QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|«([^»]+)»|(?:^|(?<=\s))\'([^\']+)\'(?=$|\s|[.,;:!?])')

# rapidocr's bundled models read Chinese and Latin script (with digits and punctuation).
SUPPORTED_SCRIPTS = ("LATIN", "CJK", "DIGIT")

# Images whose longer side is under this are upscaled (by a whole factor, bicubic) before OCR:
# the models are trained on text tens of pixels tall, and a 64x64 draft holds text 5-8 pixels
# tall, which is read as nothing at 1x and read right at 4x (32x32 needs 8x).
OCR_MIN_SIDE = 256
# The detector's input is cut down to this longer side (recognition still reads the crops
# at full resolution): headline text 20 px tall on a 1024 px poster is still found, and
# detection, most of the time per image, costs under half of what it does at 960.
DETECT_MAX_SIDE = 512


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


def upscale_factor(width: int, height: int) -> int:
    """The whole factor a small image is enlarged by before OCR (1 for one big enough)."""
    return max(1, math.ceil(OCR_MIN_SIDE / max(width, height, 1)))


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
                        "Det.limit_side_len": DETECT_MAX_SIDE,
                        # One thread per image: onnxruntime's default pool spins a thread per
                        # core while it waits, which on a CPU host shared with web, beat and
                        # other workers made each image 2-3x slower than one thread does.
                        "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                    }
                )
            started = time.perf_counter()
            image = image.convert("RGB")
            factor = upscale_factor(image.width, image.height)
            if factor > 1:
                image = image.resize((image.width * factor, image.height * factor), Image.Resampling.BICUBIC)
            result = self._engine(image)
            elapsed = (time.perf_counter() - started) * 1000
        found = []
        if result.txts:
            for text, score, box in zip(result.txts, result.scores, result.boxes.tolist(), strict=True):
                found.append((text, float(score), [[float(x), float(y)] for x, y in box]))
        # Reading order, in the frame the OCR read (text there is tens of pixels tall):
        # top to bottom, then left to right.
        found.sort(key=lambda item: (round(min(p[1] for p in item[2]) / 10), min(p[0] for p in item[2])))
        lines = [
            Line(text=text, score=score, box=[[x / factor, y / factor] for x, y in box]) for text, score, box in found
        ]
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
