import io
import textwrap

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from lanes import policy
from lanes.actions import submit_brief
from lanes.models import AuditEvent, Lane, LaneRelease, Route, Worker

GOOD = textwrap.dedent(
    """\
    routes:
      - name: fast_draft
        model: demo-tiny-sd-v1
        max_concurrency: 2
        sample_steps: 12
        fallback: final_render
      - name: final_render
        model: demo-tiny-sd-v1
        max_concurrency: 1
        sample_steps: 50
        width: 128
        height: 128
        min_size: 64
        cascade: {scale: 2, steps: 4, strength: 0.5, batch_size: 8, max_wait_ms: 40}
    intents:
      draft: fast_draft
      final: {lane: final_render, priority: critical, label: Final render}
    """
)


def export() -> str:
    out = io.StringIO()
    call_command("export_policy", stdout=out)
    return out.getvalue()


def apply(tmp_path, text: str) -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    out = io.StringIO()
    call_command("apply_policy", str(path), stdout=out)
    return out.getvalue()


def test_export_apply_export_is_identical(demo_lanes, tmp_path):
    before = export()
    assert "Applied" in apply(tmp_path, before)
    assert export() == before


def test_a_lane_opts_out_of_preemption_in_the_policy_and_the_export_says_so(demo_lanes):
    assert "preemptible: true" in export()
    text = export().replace("preemptible: true", "preemptible: false", 1)
    call_command("apply_policy", "-", stdin=io.StringIO(text), stdout=io.StringIO())
    assert export() == text and Lane.objects.filter(preemptible=False).count() == 1


def test_a_policy_piped_to_apply_policy_is_applied(demo_lanes):
    text = export().replace("max_concurrency: 2", "max_concurrency: 3", 1)
    assert text != export()
    out = io.StringIO()
    call_command("apply_policy", "-", stdin=io.StringIO(text), stdout=out)
    assert "Applied" in out.getvalue() and export() == text


def test_the_issue_form_applies_and_routes_by_intent(demo_lanes, tmp_path, creative):
    message = apply(tmp_path, GOOD)
    assert "2 lanes, 2 intents" in message and "added lanes: fast_draft, final_render" in message
    assert "disabled lanes: fallback, fast-draft, final-render" in message
    fast = Lane.objects.get(name="fast_draft")
    assert (fast.max_concurrency, fast.default_steps, fast.fallback.name, fast.queue) == (
        2,
        12,
        "final_render",
        "lane.fast_draft",
    )
    final = Lane.objects.get(name="final_render")
    assert final.cascade and final.refine_batch_size == 8 and final.refine_max_wait_ms == 40
    assert set(Route.objects.values_list("intent", "lane__name", "priority")) == {
        ("draft", "fast_draft", "standard"),
        ("final", "final_render", "critical"),
    }
    assert not Lane.objects.get(name="preview").enabled
    assert submit_brief(creative, prompt="p", intent="final").lane == final
    # And the result exports and re-applies to itself.
    again = export()
    apply(tmp_path, again)
    assert export() == again


@pytest.mark.parametrize(
    "text, errors",
    [
        (
            GOOD.replace("model: demo-tiny-sd-v1\n    max_concurrency: 1", "model: sdxl-9\n    max_concurrency: 1"),
            ["line 7: route 'final_render': unknown model 'sdxl-9'"],
        ),
        (
            GOOD.replace("fallback: final_render", "fallback: nowhere"),
            ["line 2: route 'fast_draft': fallback 'nowhere' is not a route in this policy"],
        ),
        (
            GOOD.replace("draft: fast_draft", "draft: slow_draft"),
            ["line 16: intent 'draft': unknown lane 'slow_draft'"],
        ),
        (
            GOOD.replace("    width: 128\n", "    fallback: fast_draft\n    width: 128\n"),
            [
                "line 2: fallback cycle fast_draft → final_render → fast_draft",
                "line 7: fallback cycle final_render → fast_draft → final_render",
            ],
        ),
        (
            GOOD.replace("max_concurrency: 2", "max_concurrency: 0"),
            ["line 4: max_concurrency must be at least 1, not 0"],
        ),
        (
            GOOD.replace("max_concurrency: 1", "max_concurrency: -3"),
            ["line 9: max_concurrency must be at least 1, not -3"],
        ),
        (GOOD.replace("sample_steps: 12", "sample_steps: 12\n    turbo: true"), ["line 6: unknown route key 'turbo'"]),
        (
            GOOD.replace("intents:", "extras: 1\nintents:"),
            ["line 15: unknown key 'extras' (expected routes, intents, teams)"],
        ),
        (GOOD.replace("strength: 0.5", "strength: 0.5, sharpen: 2"), ["line 14: unknown cascade key 'sharpen'"]),
        (GOOD.replace("sample_steps: 50", "sample_steps: fifty"), ["line 10: sample_steps must be int, not 'fifty'"]),
        (
            GOOD.replace("sample_steps: 50", "sample_steps: 50\n    preemptible: maybe"),
            ["line 11: preemptible must be bool, not 'maybe'"],
        ),
        (
            GOOD.replace("name: final_render", "name: fast_draft").replace(
                "fallback: final_render", "fallback: fast_draft"
            ),
            ["line 7: route 'fast_draft' is defined twice (first on line 2)"],
        ),
        (
            GOOD.replace("max_concurrency: 2", "max_concurrency: 2\n    defer_depth: 10\n    hard_cap: 5"),
            ["line 2: route 'fast_draft': hard_cap is below defer_depth"],
        ),
        ("routes: [\n  {name: x\n", ["line 3: not valid YAML"]),
        ("", ["line 1: the policy is empty"]),
        (
            GOOD.replace("max_wait_ms: 40}", "max_wait_ms: 40, upscaler: nope}"),
            ["line 7: route 'final_render': unknown upscaler 'nope'"],
        ),
        (
            GOOD.replace("max_wait_ms: 40}", "max_wait_ms: 40, upscaler: demo-tiny-sdxl-v1}"),
            ["cannot refine Stable Diffusion 1.x / 2.x drafts"],
        ),
        (
            GOOD.replace("scale: 2, steps: 4", "scale: 4, steps: 4").replace(
                "max_wait_ms: 40}", "max_wait_ms: 40, upscaler: demo-tiny-sd-x2-upscaler-v1}"
            ),
            ["A latent x2 upscaler refines at scale 2."],
        ),
    ],
)
def test_a_bad_policy_changes_nothing_and_says_where(demo_lanes, tmp_path, text, errors):
    before = export()
    with pytest.raises(CommandError) as caught:
        apply(tmp_path, text)
    message = str(caught.value)
    assert "nothing was changed" in message
    for error in errors:
        assert error in message
    assert export() == before


def test_an_unreadable_file_is_a_clear_error(demo_lanes, tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("apply_policy", str(tmp_path / "missing.yaml"))


@pytest.mark.django_db
def test_a_policy_may_only_point_lanes_at_validated_versions_and_records_the_switch(tmp_path, demo_lanes):
    from lanes.models import AuditEvent, LaneRelease, ModelVersion

    ModelVersion.objects.create(name="staged-v", location="demo-tiny-sd")
    with pytest.raises(CommandError, match="model 'staged-v' is staged; only a validated version can serve"):
        apply(tmp_path, GOOD.replace("model: demo-tiny-sd-v1", "model: staged-v", 1))
    assert not Lane.objects.filter(name="fast_draft").exists()

    ModelVersion.objects.create(name="checked-v", location="demo-tiny-sd", status=ModelVersion.Status.VALIDATED)
    apply(tmp_path, GOOD)
    apply(tmp_path, GOOD.replace("model: demo-tiny-sd-v1", "model: checked-v", 1))
    history = LaneRelease.objects.filter(lane__name="fast_draft").order_by("started_at", "id")
    assert [(r.version.name, r.outcome, r.how) for r in history] == [
        ("demo-tiny-sd-v1", "superseded", "policy"), ("checked-v", "serving", "policy"),
    ]  # fmt: skip
    assert ModelVersion.objects.get(name="checked-v").status == ModelVersion.Status.ACTIVE
    event = AuditEvent.objects.filter(action="policy.lane", lane_name="fast_draft").first()
    assert (event.before["model"], event.after["model"]) == ("demo-tiny-sd-v1", "checked-v")


def test_keys_left_out_take_the_model_familys_lane_defaults(demo_lanes, tmp_path):
    from lanes.models import ModelVersion

    # Every demo lane, then two more with only a model each.
    text = export()
    ModelVersion.objects.filter(name="demo-tiny-flux-v1").update(distilled=False)
    text = text.replace(
        "intents:",
        "- name: flux-defaults\n  model: demo-tiny-flux-v1\n- name: sdxl-defaults\n  model: demo-tiny-sdxl-v1\nintents:",
        1,
    )
    apply(tmp_path, text)
    flux, sdxl = Lane.objects.get(name="flux-defaults"), Lane.objects.get(name="sdxl-defaults")
    assert (flux.default_steps, flux.default_guidance, flux.default_width, flux.max_guidance) == (28, 3.5, 1024, 10.0)
    assert (sdxl.default_steps, sdxl.default_guidance, sdxl.default_width, sdxl.min_size) == (30, 5.0, 1024, 512)
    # A distilled Flux (schnell) gets few steps and no guidance.
    ModelVersion.objects.filter(name="demo-tiny-flux-v1").update(distilled=True)
    apply(tmp_path, text)
    flux.refresh_from_db()
    assert (flux.default_steps, flux.default_guidance, flux.max_steps) == (4, 0.0, 8)


def test_applying_answers_with_what_it_changed(demo_lanes, creative):
    waiting = submit_brief(creative, prompt="queued before the change", intent="draft")
    enabled = sorted(Lane.objects.filter(enabled=True).values_list("name", flat=True))
    intents = sorted(Route.objects.values_list("intent", flat=True))
    diff = policy.apply(GOOD)
    assert diff.applied and (diff.lanes, diff.intents) == (2, 2)
    assert diff.added_lanes == ["fast_draft", "final_render"] and diff.changed_lanes == {}
    assert diff.disabled_lanes == enabled
    assert diff.removed_intents == [i for i in intents if i not in ("draft", "final")]
    # draft was fast-draft, standard, "Fast draft"; final was final-render, critical, "Final render".
    assert diff.changed_intents == {"draft": ["lane", "label"], "final": ["lane"]} and not diff.added_intents
    assert diff.affected_jobs == {waiting.lane.name: 1}
    assert diff.unconsumed_lanes == ["fast_draft", "final_render"]  # no worker is alive here
    summary = diff.summary()
    assert summary.startswith("added lanes: fast_draft, final_render; ")
    assert f"disabled lanes: {', '.join(enabled)}" in summary and "1 queued job on changed or disabled lanes" in summary


def test_a_dry_run_answers_the_same_and_changes_nothing(demo_lanes):
    before, audits, releases = export(), AuditEvent.objects.count(), LaneRelease.objects.count()
    dry = policy.apply(GOOD, dry_run=True)
    assert not dry.applied and dry.added_lanes == ["fast_draft", "final_render"] and dry.disabled_lanes
    assert export() == before and AuditEvent.objects.count() == audits and LaneRelease.objects.count() == releases
    assert not Lane.objects.filter(name="fast_draft").exists()
    real = policy.apply(GOOD)
    assert real.applied and real.as_dict() == dry.as_dict()


def test_a_dry_run_finds_the_errors_applying_would(demo_lanes):
    stranding = export().replace("enabled: true", "enabled: false")  # every lane off: intents reach nothing
    with pytest.raises(policy.PolicyError) as caught:
        policy.apply(stranding, dry_run=True)
    assert any("would reach no enabled lane" in e for e in caught.value.errors)
    assert Lane.objects.filter(enabled=True).exists()


def test_changed_lanes_and_intents_name_the_keys_that_change(demo_lanes):
    text = export().replace("max_concurrency: 2", "max_concurrency: 3", 1)
    text = text.replace("lane: fast-draft\n    priority: standard", "lane: fast-draft\n    priority: critical", 1)
    diff = policy.apply(text)
    assert diff.changed_lanes == {"fallback": ["max_concurrency"]}
    assert list(diff.changed_intents.values()) == [["priority"]]
    assert not (diff.added_lanes or diff.disabled_lanes or diff.removed_intents or diff.added_intents)
    assert policy.apply(text).is_empty and policy.apply(text).summary() == "nothing changed"


def test_disabling_a_lane_in_the_file_counts_as_disabled_and_lists_its_waiting_jobs(demo_lanes, creative):
    waiting = submit_brief(creative, prompt="waits", intent="draft")
    name = waiting.lane.name
    text = export()
    start = text.index(f"- name: {name}\n")
    text = text[:start] + text[start:].replace("enabled: true", "enabled: false", 1)
    diff = policy.apply(text, dry_run=True)
    assert diff.disabled_lanes == [name] and name not in diff.changed_lanes
    assert diff.affected_jobs == {name: 1}


def test_a_lane_a_live_worker_consumes_is_not_reported_unconsumed(demo_lanes):
    Worker.objects.create(ident="h:1", hostname="h", pid=1, queues="lane.fast_draft,celery")
    Worker.objects.create(
        ident="h:2", hostname="h", pid=2, queues="lane.final_render,lane.final_render.refine", stopped_at=timezone.now()
    )
    diff = policy.apply(GOOD, dry_run=True)
    assert diff.unconsumed_lanes == ["final_render"]  # its only worker stopped


def test_apply_policy_dry_run_prints_the_changes_and_changes_nothing(demo_lanes, tmp_path):
    before = export()
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    out = io.StringIO()
    call_command("apply_policy", str(path), "--dry-run", stdout=out)
    printed = out.getvalue()
    assert "Would apply" in printed and "added lanes: fast_draft, final_render" in printed
    assert "disabled lanes: " in printed and "removed intents: " in printed and "nothing was changed" in printed
    assert export() == before
