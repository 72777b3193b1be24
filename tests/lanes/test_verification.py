from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from lanes.typeset import KINDS, MIN_TEXT_PX, labelled_set, overlay_text, render, render_small
from lanes.verification import expected_texts, upscale_factor, verify_image

STRICT = SimpleNamespace(verify_threshold=0.95, verify_case_sensitive=True, verify_ignore_punctuation=False)


def test_expected_text_comes_from_the_field_and_quoted_strings_in_the_prompt():
    assert expected_texts("SALE 50%", 'A poster saying "OPEN LATE" and “Fresh bread”, Joe\'s shop') == [
        "SALE 50%",
        "OPEN LATE",
        "Fresh bread",
    ]
    assert expected_texts("", "no quotes, isn't it") == []
    assert expected_texts("OPEN", 'a sign "OPEN"') == ["OPEN"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_labelled_set_gets_the_expected_verdicts(kind):
    samples = [s for s in labelled_set(4 * len(KINDS), seed=11) if s.kind == kind]
    for s in samples:
        verdict = verify_image(s.image, [s.expected], STRICT)
        assert verdict.status == ("flagged" if s.should_flag else "passed"), (s.expected, s.rendered, verdict.reason)
        assert verdict.ocr_ms > 0


def test_a_flag_says_what_was_expected_and_what_was_read():
    verdict = verify_image(render("SUMMER SAIE"), ["SUMMER SALE"], STRICT)
    assert verdict.status == "flagged"
    assert verdict.reason == "mismatch: expected 'SUMMER SALE', read 'SUMMER SAIE' (similarity 0.91)"
    score = verdict.details()["scores"][0]
    assert score["edit_distance"] == pytest.approx(0.0909, abs=1e-3) and len(score["box"]) == 4
    assert verify_image(render(""), ["OPEN"], STRICT).reason == "missing: 'OPEN' was not found"


def test_case_and_punctuation_follow_the_lane_policy():
    lenient = SimpleNamespace(verify_threshold=0.95, verify_case_sensitive=False, verify_ignore_punctuation=True)
    assert verify_image(render("Summer Sale"), ["SUMMER SALE"], lenient).status == "passed"
    assert verify_image(render("OPEN, TODAY!"), ["OPEN TODAY"], lenient).status == "passed"
    assert verify_image(render("Summer Sale"), ["SUMMER SALE"], STRICT).status == "flagged"


def test_an_expected_string_inside_a_longer_line_passes():
    assert verify_image(render("BIG SUMMER SALE NOW"), ["SUMMER SALE"], STRICT).status == "passed"


def test_briefs_the_ocr_cannot_judge_are_not_applicable_or_an_error(settings):
    assert verify_image(render("OPEN"), [], STRICT).status == "not_applicable"
    cyrillic = verify_image(render("OPEN"), ["ОТКРЫТО"], STRICT)
    assert cyrillic.status == "not_applicable" and "supported: Latin and Chinese script" in cyrillic.reason
    settings.VERIFY_MAX_PIXELS = 1000
    huge = verify_image(render("OPEN"), ["OPEN"], STRICT)
    assert huge.status == "error" and "over the 1,000 pixel limit" in huge.reason


def test_an_auto_fixed_image_passes_verification_again():
    flagged = verify_image(render("FRESH BRAED"), ["FRESH BREAD"], STRICT)
    box = flagged.details()["scores"][0]["box"]
    fixed = overlay_text(render("FRESH BRAED"), "FRESH BREAD", box)
    assert verify_image(fixed, ["FRESH BREAD"], STRICT).status == "passed"
    # With nothing detected, the text goes into a band at the bottom.
    blank = overlay_text(render(""), "GRAND OPENING", None)
    assert verify_image(blank, ["GRAND OPENING"], STRICT).status == "passed"


def noise(side: int, seed: int = 0) -> Image.Image:
    """What the demo checkpoint paints: no text at all."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_small_images_are_upscaled_for_ocr_and_boxes_come_back_in_image_pixels():
    assert [upscale_factor(s, s) for s in (32, 64, 100, 128, 255, 256, 1024)] == [8, 4, 3, 2, 2, 1, 1]
    assert upscale_factor(512, 64) == 1  # a wide banner is read as it is
    for side in (32, 64):
        verdict = verify_image(render_small("SUMMER SALE", side), ["SUMMER SALE"], STRICT)
        assert verdict.status == "passed", (side, verdict.reason)
        for line in verdict.lines:
            assert all(-1 <= x <= side + 1 and -1 <= y <= side + 1 for x, y in line.box), line.box
    flagged = verify_image(render_small("SUMMER SAIE", 64), ["SUMMER SALE"], STRICT)
    assert flagged.status == "flagged" and "read 'SUMMER SAIE'" in flagged.reason


@pytest.mark.parametrize("side", [32, 64])
@pytest.mark.parametrize("text", ["SUMMER SALE", "GRAND OPENING", "BIG SALE", "NEW ARRIVALS"])
def test_auto_fix_passes_at_preview_and_draft_sizes(side, text):
    original = noise(side)
    assert verify_image(original, [text], STRICT).reason == f"missing: {text!r} was not found"
    fixed = overlay_text(original, text, None)
    assert fixed.size == (side, side)
    verdict = verify_image(fixed, [text], STRICT)
    assert verdict.status == "passed", verdict.reason
    # Set no smaller than the OCR can read: each line read is at least MIN_TEXT_PX tall in the image.
    for line in verdict.lines:
        assert max(y for _, y in line.box) - min(y for _, y in line.box) >= MIN_TEXT_PX, line


def test_auto_fix_over_a_tiny_detected_box_grows_it_to_cover_the_old_text():
    image = render_small("SUMMER SAIE", 64)
    flagged = verify_image(image, ["SUMMER SALE"], STRICT)
    box = flagged.details()["scores"][0]["box"]
    fixed = overlay_text(image, "SUMMER SALE", box)
    verdict = verify_image(fixed, ["SUMMER SALE"], STRICT)
    assert verdict.status == "passed", verdict.reason
    assert all("SAIE" not in line.text for line in verdict.lines)  # the misspelling is painted over
