"""LoRA adapters: registered and checked against their version, validated by a smoke render,
served by lanes, and switched per job on one loaded pipeline without leaking into the next job."""

from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image

from lanes import adapters, engines, registry
from lanes.actions import BriefRejected, submit_brief
from lanes.changes import ControlError
from lanes.checkpoints import build_demo_lora
from lanes.models import Adapter, Job, Lane, ModelVersion
from tests.conftest import make_user, wait_for_job

LORAS = {"sd15": "demo-tiny-sd", "sdxl": "demo-tiny-sdxl", "flux": "demo-tiny-flux"}


@pytest.fixture
def admin(db):
    return make_user("ada", "admin")


@pytest.fixture
def lora_files(demo_lanes):
    """A random LoRA per base checkpoint, under MODELS_ROOT/loras/<family>/ (built once)."""
    files = {}
    for family, base in LORAS.items():
        target = Path(settings.MODELS_ROOT) / "loras" / family
        file = target / "pytorch_lora_weights.safetensors"
        if not file.exists():
            build_demo_lora(Path(settings.MODELS_ROOT) / base, target)
        files[family] = f"loras/{family}/pytorch_lora_weights.safetensors"
    return files


def sd15():
    return ModelVersion.objects.get(name="demo-tiny-sd-v1")


def validated(adapter: Adapter) -> Adapter:
    assert registry.validate_adapter(adapter.pk) == "validated", Adapter.objects.get(pk=adapter.pk).validation_error
    adapter.refresh_from_db()
    return adapter


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.django_db
def test_an_adapter_is_switched_per_call_and_off_means_the_base_model(lora_files, admin):
    adapter = adapters.register_adapter(
        admin, version=sd15(), name="house", location=lora_files["sd15"], validate=False
    )
    ref = engines.LoraRef(adapter.lora_name, adapter.file_path(), 1.0)
    cache = engines.EngineCache(budget_bytes=None)
    call = dict(prompt="A red kite", seed=11, width=64, height=64, steps=3, guidance=7.5)
    with cache.use(sd15(), width=64, height=64) as engine:
        base = pixels(engine.run(**call).image)
        styled = pixels(engine.run(**call, adapters=[ref]).image)
        half = pixels(engine.run(**call, adapters=[engines.LoraRef(ref.name, ref.path, 0.5)]).image)
        after = pixels(engine.run(**call).image)
    assert np.abs(styled - base).max() > 10  # the adapter changes the image…
    assert not np.array_equal(half, styled)  # …by its weight…
    assert np.array_equal(after, base)  # …and, once off, the same seed gives the base image exactly.
    assert len(cache.loaded()) == 1  # the base was never reloaded

    # Fusing the adapter into the weights renders what the unfused adapter does (within rounding).
    fused = engines.load_pipeline(sd15(), engines.Device("cpu", None))
    fused.load_lora_weights(str(ref.path), adapter_name="house")
    fused.fuse_lora(adapter_names=["house"], lora_scale=1.0)
    fused.unload_lora_weights()
    fused_engine = engines.Engine(("fused",), fused, engines.Device("cpu", None))
    assert np.abs(pixels(fused_engine.run(**call).image) - styled).max() <= 2


@pytest.mark.django_db(transaction=True)
def test_consecutive_jobs_on_one_worker_do_not_leak_an_adapter(worker, creative, lora_files):
    admin = make_user("ada", "admin")
    adapter = validated(
        adapters.register_adapter(admin, version=sd15(), name="house", location=lora_files["sd15"], validate=False)
    )
    lane = Lane.objects.get(name="fast-draft")
    adapters.link(lane, adapter, admin, weight=1.0)

    def render(**extra):
        job = wait_for_job(submit_brief(creative, prompt="Kite", intent="draft", seed=5, **extra).pk, timeout=60)
        assert job.state == Job.State.SUCCEEDED, job.error
        return job, pixels(Image.open(job.artifacts.get(stage="final").absolute_path).convert("RGB"))

    first, before = render()
    styled_job, styled = render(adapters=["house"])
    last, after = render()
    assert first.adapters == last.adapters == []
    assert styled_job.adapters == [{"id": adapter.pk, "name": "house", "weight": 1.0}]
    assert np.abs(styled - before).max() > 10
    assert np.array_equal(after, before)


@pytest.mark.django_db
def test_a_pinned_adapter_applies_to_every_job_and_an_unoffered_one_is_refused(lora_files, admin, creative):
    adapter = validated(
        adapters.register_adapter(admin, version=sd15(), name="house", location=lora_files["sd15"], validate=False)
    )
    lane = Lane.objects.get(name="fast-draft")
    adapters.link(lane, adapter, admin, weight=0.8, pinned=True)
    job = submit_brief(creative, prompt="Kite", intent="draft")
    assert job.adapters == [{"id": adapter.pk, "name": "house", "weight": 0.8}]
    with pytest.raises(BriefRejected) as exc:
        submit_brief(creative, prompt="Kite", intent="draft", adapters=["neon"])
    assert exc.value.errors == {"adapters": "Lane fast-draft does not offer the LoRA adapter(s) neon."}
    with pytest.raises(BriefRejected, match="does not offer"):
        submit_brief(creative, prompt="Kite", intent="preview", adapters=["house"])  # another lane


@pytest.mark.django_db
def test_registration_refuses_a_lora_of_another_family_or_shape_naming_the_file(lora_files, admin):
    with pytest.raises(ControlError) as exc:
        adapters.register_adapter(admin, version=sd15(), name="x", location=lora_files["flux"])
    assert exc.value.errors["location"] == (
        "pytorch_lora_weights.safetensors is a LoRA for a transformer model (SD3, Flux); "
        "demo-tiny-sd-v1 is Stable Diffusion 1.x / 2.x."
    )
    with pytest.raises(ControlError) as exc:  # an SDXL LoRA: same names, other widths
        adapters.register_adapter(admin, version=sd15(), name="x", location=lora_files["sdxl"])
    assert "does not fit demo-tiny-sd-v1" in exc.value.errors["location"]
    assert "has shape" in exc.value.errors["location"]
    with pytest.raises(ControlError) as exc:
        adapters.register_adapter(admin, version=sd15(), name="x", location="../../etc/passwd")
    assert "outside MODELS_ROOT" in exc.value.errors["location"]
    upscaler = ModelVersion.objects.get(family="latent-upscaler-x2")
    with pytest.raises(ControlError) as exc:
        adapters.register_adapter(admin, version=upscaler, name="x", location=lora_files["sd15"])
    assert "takes no LoRA adapters" in exc.value.errors["location"]
    assert not Adapter.objects.exists()


@pytest.mark.django_db
def test_validation_smoke_renders_with_the_adapter_and_refuses_a_corrupt_one(lora_files, admin):
    sdxl = ModelVersion.objects.get(name="demo-tiny-sdxl-v1")
    good = adapters.register_adapter(admin, version=sdxl, name="sdxl-style", location=lora_files["sdxl"])
    assert validated(good).status == Adapter.Status.VALIDATED
    corrupt = Path(settings.MODELS_ROOT) / "loras" / "corrupt.safetensors"
    corrupt.write_bytes((Path(settings.MODELS_ROOT) / lora_files["sdxl"]).read_bytes()[:-64])
    with pytest.raises(ControlError, match="not a readable .safetensors file"):
        adapters.register_adapter(admin, version=sdxl, name="broken", location="loras/corrupt.safetensors")
    # A file changed after registration fails validation, and cannot serve a lane.
    changed = Path(settings.MODELS_ROOT) / "loras" / "changed.safetensors"
    changed.write_bytes((Path(settings.MODELS_ROOT) / lora_files["sdxl"]).read_bytes())
    adapter = adapters.register_adapter(admin, version=sdxl, name="changed", location="loras/changed.safetensors")
    changed.write_bytes(b"\0" * 16)
    assert registry.validate_adapter(adapter.pk) == "invalid"
    adapter.refresh_from_db()
    assert "changed since registration" in adapter.validation_error
    with pytest.raises(ControlError, match="only validated adapters serve lanes"):
        adapters.link(Lane.objects.get(name="sdxl"), adapter, admin)
    with pytest.raises(ControlError, match="which lane fast-draft does not serve"):
        adapters.link(Lane.objects.get(name="fast-draft"), good, admin)


@pytest.mark.django_db
def test_a_failed_adapter_load_leaves_no_adapter_switched_on(lora_files, admin):
    good = adapters.register_adapter(admin, version=sd15(), name="good", location=lora_files["sd15"], validate=False)
    ref = engines.LoraRef(good.lora_name, good.file_path(), 1.0)
    # A LoRA of another model, loaded after a good one in the same set: the load fails halfway.
    wrong = engines.LoraRef("wrong", Path(settings.MODELS_ROOT) / lora_files["sdxl"], 1.0)
    cache = engines.EngineCache(budget_bytes=None)
    call = dict(prompt="A red kite", seed=11, width=64, height=64, steps=3, guidance=7.5)
    with cache.use(sd15(), width=64, height=64) as engine:
        base = pixels(engine.run(**call).image)
        with pytest.raises(Exception, match="does not fit this model"):
            engine.run(**call, adapters=[ref, wrong])
        assert np.array_equal(pixels(engine.run(**call).image), base)  # "good" did not stay on
        assert np.abs(pixels(engine.run(**call, adapters=[ref]).image) - base).max() > 10


@pytest.mark.django_db
def test_a_job_wanting_another_adapter_set_is_not_starved_by_a_stream_of_the_set_in_use(lora_files, admin):
    import threading
    import time

    adapter = adapters.register_adapter(admin, version=sd15(), name="house", location=lora_files["sd15"])
    ref = engines.LoraRef(adapter.lora_name, adapter.file_path(), 1.0)
    cache = engines.EngineCache(budget_bytes=None)
    with cache.use(sd15(), width=64, height=64) as engine:
        order: list[str] = []
        stop = threading.Event()

        def base_stream():  # back-to-back calls with no adapter, overlapping each other
            while not stop.is_set():
                with engine.adapters([]):
                    order.append("base")
                    time.sleep(0.02)

        streams = [threading.Thread(target=base_stream, daemon=True) for _ in range(3)]
        for thread in streams:
            thread.start()
        try:
            time.sleep(0.1)
            started = time.monotonic()
            with engine.adapters([ref], wait_timeout=5):
                waited = time.monotonic() - started
                order.append("house")
        finally:
            stop.set()
            for thread in streams:
                thread.join()
    assert "house" in order and waited < 5.0
    assert order.index("house") < len(order) - 1, "the base streams went on after the switch"


@pytest.mark.django_db
def test_a_rerouted_job_keeps_only_the_adapters_its_new_lane_serves(lora_files, admin, creative):
    from lanes.router import rerouted_fields

    adapter = validated(
        adapters.register_adapter(admin, version=sd15(), name="house", location=lora_files["sd15"], validate=False)
    )
    adapters.link(Lane.objects.get(name="fast-draft"), adapter, admin, weight=0.5, pinned=True)
    job = submit_brief(creative, prompt="Kite", intent="draft")
    assert [a["name"] for a in job.adapters] == ["house"]
    to_sdxl = rerouted_fields(job, Lane.objects.get(name="sdxl"), "out of memory")
    assert to_sdxl["adapters"] == [] and "without LoRA house: not on lane sdxl" in to_sdxl["admission_reason"]
    adapters.link(Lane.objects.get(name="fallback"), adapter, admin, weight=0.9)
    to_fallback = rerouted_fields(job, Lane.objects.get(name="fallback"), "out of memory")
    assert to_fallback["adapters"] == [{"id": adapter.pk, "name": "house", "weight": 0.9}]
