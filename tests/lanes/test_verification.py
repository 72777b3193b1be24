from types import SimpleNamespace

import pytest

from lanes.typeset import KINDS, labelled_set, render
from lanes.verification import expected_texts, overlay_text, verify_image

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
