"""Shadow pairs with known figures, made without a worker: production jobs of fast-draft and the shadow jobs
lanes.shadow.sample submits for them, finished as a worker and the OCR check leave them."""

from PIL import Image

from lanes import artifacts, shadow
from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Verification

# (state, run seconds, device-seconds, verdict or None when the brief expects no text, similarity)
OK = ("succeeded", 1.0, 1.0, "passed", 1.0)


def finish(job: Job, state: str, run_s: float | None, gpu_s: float | None, verdict: str | None, similarity: float):
    """Store what a worker and the OCR check leave behind: the state, timings, the image and its verdict."""
    Job.objects.filter(pk=job.pk).update(state=state, run_seconds=run_s, gpu_seconds=gpu_s, device="cpu")
    job.refresh_from_db()
    if state != Job.State.SUCCEEDED:
        return
    artifact = artifacts.store_png(job, Image.new("RGB", (8, 8), (job.seed % 256, 0, 0)), Artifact.Stage.FINAL)
    if verdict is not None:
        Verification.objects.create(
            job=job, artifact=artifact, lane=job.lane, model_version=job.model_version, expected=["SALE"],
            status=verdict, details={"scores": [{"expected": "SALE", "similarity": similarity}]},
        )  # fmt: skip


def make_pairs(maker, shadowed: list[tuple], production: tuple = OK, first_seed: int = 100) -> list[Job]:
    """One production job and its shadow job per entry of `shadowed`; returns the shadow jobs."""
    copies = []
    for seed, figures in enumerate(shadowed, start=first_seed):
        job = submit_brief(
            maker, prompt=f"A poster saying SALE {seed}", expected_text="SALE", intent="draft", seed=seed
        )
        finish(job, *production)
        copy = shadow.sample(job)
        assert copy is not None, "the fast-draft lane has no shadow at 100 %"
        finish(copy, *figures)
        copies.append(copy)
    return copies
