"""Flagging quality and OCR time of typography verification on a seeded labelled set.

Renders --images posters with PIL in a real TTF font (lanes/typeset.py, the verifier's
calibration set: correct, misspelt, missing, extra characters, wrong case, low contrast,
rotated a little, and 32x32 and 64x64 previews and drafts with the text right or misspelt),
verifies each against its expected text with the default lane policy (case-sensitive,
threshold 0.95), and prints precision and recall of flagging (a flag is the positive) and
OCR time per image (upscaling of small images included): wall time, and the process's CPU
time, which a machine shared with other work leaves as it is. Ends with one line of JSON.

    .venv/bin/python bench/verify.py [--images 240] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from types import SimpleNamespace

import harness  # noqa: I001  (puts the repository on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("LANEWAY_VAR_DIR", tempfile.mkdtemp(prefix="laneway-bench-verify-"))
    harness.setup_django()
    from lanes.models import Lane
    from lanes.typeset import labelled_set
    from lanes.verification import reader, verify_image

    defaults = {f: Lane._meta.get_field(f).default for f in ("verify_threshold", "verify_case_sensitive")}
    policy = SimpleNamespace(
        verify_ignore_punctuation=Lane._meta.get_field("verify_ignore_punctuation").default, **defaults
    )
    samples = labelled_set(args.images, seed=args.seed)
    reader.read(samples[0].image)  # load the OCR models before timing
    outcomes, times, cpu_times, wrong = Counter(), [], [], Counter()
    for s in samples:
        cpu_started = time.process_time()
        verdict = verify_image(s.image, [s.expected], policy)
        cpu_times.append((time.process_time() - cpu_started) * 1000)
        flagged = verdict.status == "flagged"
        times.append(verdict.ocr_ms)
        key = ("t" if flagged == s.should_flag else "f") + ("p" if flagged else "n")
        outcomes[key] += 1
        if flagged != s.should_flag:
            wrong[s.kind] += 1
    precision = outcomes["tp"] / max(1, outcomes["tp"] + outcomes["fp"])
    recall = outcomes["tp"] / max(1, outcomes["tp"] + outcomes["fn"])
    p50, p95 = harness.percentile(times, 50), harness.percentile(times, 95)
    cpu_p50, cpu_p95 = harness.percentile(cpu_times, 50), harness.percentile(cpu_times, 95)
    print(
        f"{len(samples)} images: tp {outcomes['tp']} fp {outcomes['fp']} tn {outcomes['tn']} fn {outcomes['fn']}; "
        f"precision {precision:.3f} recall {recall:.3f}; OCR p50 {p50:.0f} ms p95 {p95:.0f} ms "
        f"(CPU p50 {cpu_p50:.0f} ms p95 {cpu_p95:.0f} ms); "
        f"wrong verdicts by kind: {dict(wrong) or 'none'}",
        file=sys.stderr,
    )
    print(json.dumps({"bench": "verify", "precision": round(precision, 4), "recall": round(recall, 4),
                      "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "cpu_p50_ms": round(cpu_p50, 1),
                      "cpu_p95_ms": round(cpu_p95, 1), "images": len(samples)}))  # fmt: skip


if __name__ == "__main__":
    main()
