"""Every family through Laneway's own path: detected at registration, loaded with diffusers'
classes, rendered by a real worker with live progress, cascaded on SDXL."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings
from PIL import Image

from lanes import families, registry
from lanes.actions import BriefRejected, submit_brief
from lanes.changes import ControlError
from lanes.checkpoints import build_demo_checkpoint
from lanes.demo import FAMILY_DEMOS
from lanes.engines import Device, estimate_weights_bytes, load_pipeline, tensor_storages
from lanes.models import Job, Lane, ModelVersion
from tests.conftest import make_user, wait_for_job

DEMO_FOLDERS = {family: folder for family, folder, _ in FAMILY_DEMOS} | {"sd15": "demo-tiny-sd"}
PIPELINES = {
    "sd15": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}


@pytest.fixture
def admin(db):
    return make_user("ada", "admin")


def test_the_family_choices_and_the_family_table_name_the_same_families():
    assert set(ModelVersion.Family.values) == set(families.FAMILIES)
    assert {row["family"] for row in families.table() if row["text2img"]} == {"sd15", "sdxl", "sd3", "flux", "http"}


@pytest.mark.django_db
@pytest.mark.parametrize("family", ["sd15", "sdxl", "sdxl-refiner", "sd3", "flux"])
def test_registration_detects_the_family_and_the_loader_uses_its_pipeline(demo_lanes, admin, family):
    folder = DEMO_FOLDERS[family]
    version = registry.register_version(admin, name=f"mine-{family}", location=folder, validate=False)
    assert version.family == family and version.distilled is False
    pipe = load_pipeline(version, Device("cpu", None))
    assert type(pipe).__name__ == PIPELINES[family]
    # The weights estimate (read from the files' headers) is what loading takes, but for buffers never
    # saved (a text encoder's position ids).
    assert estimate_weights_bytes(version, "cpu") == pytest.approx(sum(tensor_storages(pipe).values()), rel=0.01)


@pytest.mark.django_db
def test_registration_refuses_a_family_that_contradicts_the_checkpoint(demo_lanes, admin):
    with pytest.raises(ControlError) as exc:
        registry.register_version(admin, name="wrong", location="demo-tiny-sdxl", family="flux", validate=False)
    assert exc.value.errors["family"] == "demo-tiny-sdxl is a Stable Diffusion XL checkpoint, not Flux."
    assert not ModelVersion.objects.filter(name="wrong").exists()


@pytest.mark.django_db
def test_registration_refuses_a_folder_of_an_unknown_pipeline_naming_it(demo_lanes, admin):
    folder = Path(settings.MODELS_ROOT) / "not-a-family"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(ControlError) as exc:
        registry.register_version(admin, name="kandinsky", location="not-a-family", validate=False)
    assert "names pipeline 'KandinskyPipeline', which is not a family Laneway serves" in exc.value.errors["location"]
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ControlError) as exc:
        registry.register_version(admin, name="kandinsky", location="not-a-family", validate=False)
    assert "model_index.json cannot be read as JSON" in exc.value.errors["location"]
    assert not ModelVersion.objects.filter(name="kandinsky").exists()


@pytest.mark.django_db
def test_a_flux_checkpoint_without_guidance_embedding_is_registered_as_distilled(demo_lanes, admin, tmp_path):
    source = Path(settings.MODELS_ROOT) / "demo-tiny-flux"
    target = Path(settings.MODELS_ROOT) / "test-flux-schnell"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    config = target / "transformer" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "guidance_embeds": False}))
    version = registry.register_version(admin, name="flux-schnell", location="test-flux-schnell", validate=False)
    assert version.family == "flux" and version.distilled is True
    assert families.lane_defaults("flux", distilled=True).steps == 4
    assert families.call_kwargs("flux", distilled=True) == {"max_sequence_length": 256}


@pytest.mark.django_db
def test_a_lane_refuses_a_refiner_as_its_renderer_and_an_sd15_refiner_for_sdxl(demo_lanes):
    lane = Lane.objects.get(name="sdxl-hires")
    lane.full_clean()  # the seeded SDXL cascade with the SDXL refiner is valid
    lane.active_version = ModelVersion.objects.get(name="demo-tiny-sdxl-refiner-v1")
    with pytest.raises(Exception, match="cannot render from a prompt"):
        lane.full_clean()
    lane = Lane.objects.get(name="fast-draft")
    lane.cascade, lane.refine_version = True, ModelVersion.objects.get(name="demo-tiny-sdxl-refiner-v1")
    with pytest.raises(Exception, match="cannot refine Stable Diffusion 1.x / 2.x drafts"):
        lane.full_clean()
    flux = Lane.objects.get(name="flux")
    flux.default_width = 72
    with pytest.raises(Exception, match="multiples of 16"):
        flux.full_clean()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("intent", ["sdxl", "sd3", "flux"])
def test_each_family_renders_a_brief_through_its_lane_with_progress(worker, creative, intent):
    job = wait_for_job(submit_brief(creative, prompt="A lighthouse at dusk", intent=intent, seed=7).pk, timeout=60)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.model_version.family == intent and job.lane.name == intent
    final = job.artifacts.get(stage="final")
    assert Image.open(final.absolute_path).size == (job.width, job.height) == (64, 64)
    assert job.progress_step == job.total_steps == job.steps


@pytest.mark.django_db(transaction=True)
def test_the_sdxl_cascade_refines_drafts_with_the_sdxl_refiner_in_batches(worker, creative, demo_lanes):
    Lane.objects.filter(name="sdxl-hires").update(refine_max_wait_ms=400, max_concurrency=4)
    jobs = [submit_brief(creative, prompt=f"SDXL hires {i}", intent="sdxl-hires", seed=i) for i in range(4)]
    done = [wait_for_job(job.pk, timeout=90) for job in jobs]
    assert {job.state for job in done} == {Job.State.SUCCEEDED}, [j.error for j in done]
    for job in done:
        assert job.refine_version.family == "sdxl-refiner"
        draft, final = job.artifacts.get(stage="draft"), job.artifacts.get(stage="final")
        assert (draft.width, draft.height, final.width, final.height) == (64, 64, 128, 128)
        assert job.progress_step == job.total_steps
    sizes = Counter(job.refine_batch_size for job in done)
    assert all(count % size == 0 for size, count in sizes.items()), sizes
    assert max(sizes) > 1  # at least one refine call bundled several jobs


@pytest.mark.django_db(transaction=True)
def test_an_sdxl_lane_without_refiner_refines_with_its_own_img2img(worker, creative, demo_lanes):
    Lane.objects.filter(name="sdxl-hires").update(refine_version=None)
    job = wait_for_job(submit_brief(creative, prompt="Own img2img", intent="sdxl-hires").pk, timeout=60)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.refine_version is None and job.artifacts.get(stage="final").width == 128


@pytest.mark.django_db
def test_a_brief_off_the_family_size_grid_is_refused(creative, demo_lanes):
    with pytest.raises(BriefRejected, match="multiple of 16"):
        submit_brief(creative, prompt="Odd", intent="flux", width=72)


def test_every_family_builds_offline_and_reloads_with_autopipeline(tmp_path):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image

    for family in ("sd15", "sdxl", "sd3", "flux"):
        build_demo_checkpoint(tmp_path / family, family=family)
        assert families.detect_family(tmp_path / family) == family
        pipe = AutoPipelineForText2Image.from_pretrained(tmp_path / family, local_files_only=True)
        assert type(pipe).__name__ == PIPELINES[family]
        assert sum(f.stat().st_size for f in (tmp_path / family).rglob("*") if f.is_file()) < 10 * 1024 * 1024
    build_demo_checkpoint(tmp_path / "refiner", family="sdxl-refiner")
    assert families.detect_family(tmp_path / "refiner") == "sdxl-refiner"
    assert type(AutoPipelineForImage2Image.from_pretrained(tmp_path / "refiner")).__name__ == PIPELINES["sdxl-refiner"]


@pytest.mark.django_db
def test_a_version_that_does_not_fit_a_lane_is_refused_as_its_active_or_canary_version(demo_lanes, admin):
    from lanes import rollout

    hosted = ModelVersion.objects.get(name="demo-hosted-images-api")
    flux = ModelVersion.objects.get(name="demo-tiny-flux-v1")
    ModelVersion.objects.filter(pk__in=[hosted.pk, flux.pk]).update(status=ModelVersion.Status.VALIDATED)
    hires = Lane.objects.get(name="sdxl-hires")
    with pytest.raises(ControlError, match="hosted engine: its images cannot be a cascade's draft"):
        rollout.start_canary(hires, hosted, 10, admin)
    with pytest.raises(ControlError, match="cannot refine Flux drafts"):
        rollout.activate(hires, flux, admin)
    hires.refresh_from_db()
    assert hires.active_version.name == "demo-tiny-sdxl-v1" and hires.canary_version is None
    # A plain SDXL lane takes Flux: both render 64x64.
    assert rollout.activate(Lane.objects.get(name="sdxl"), flux, admin).active_version == flux


@pytest.mark.django_db
def test_a_hosted_version_refuses_a_key_in_its_url_and_any_variable_but_a_key(demo_lanes, admin, monkeypatch):
    monkeypatch.setenv("PARTNER_API_KEY", "k")
    common = dict(name="api", family="http", remote_model="m", validate=False)
    with pytest.raises(ControlError) as exc:
        registry.register_version(admin, base_url="https://u:secret@api.example/v1", api_key_env="PARTNER_API_KEY",
                                  **common)  # fmt: skip
    assert "may not carry credentials" in exc.value.errors["base_url"]
    with pytest.raises(ControlError) as exc:
        registry.register_version(admin, base_url="https://api.example/v1?key=s", api_key_env="PARTNER_API_KEY",
                                  **common)  # fmt: skip
    assert "may not carry credentials or a query" in exc.value.errors["base_url"]
    with pytest.raises(ControlError) as exc:
        registry.register_version(admin, base_url="https://api.example/v1", api_key_env="DATABASE_URL", **common)
    assert "ending in _KEY or _TOKEN" in exc.value.errors["api_key_env"]
    version = registry.register_version(admin, base_url="https://api.example/v1", api_key_env="PARTNER_API_KEY",
                                        **common)  # fmt: skip
    assert version.is_hosted and version.api_key_env == "PARTNER_API_KEY" and "k" not in version.base_url
