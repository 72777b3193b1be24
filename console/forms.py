from django import forms
from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS

from accounts.access import has_role
from accounts.models import Role, Team
from experiments.definition import parse_prompt_lines
from lanes import families, progressive
from lanes.actions import BriefRejected, submit_brief
from lanes.control import OPS_FIELDS
from lanes.models import Adapter, Job, Lane, LaneAdapter, ModelVersion, Priority, Route, TeamQuota
from lanes.quotas import QUOTA_FIELDS
from lanes.router import size_multiple
from webhooks import endpoints, outbox
from webhooks.models import WebhookError


def error_summary(form: forms.BaseForm) -> str:
    """A form's errors as one line for a message: each field by its label, and errors about
    the whole form as plain sentences (never Django's `__all__` key)."""
    parts = []
    for name, errors in form.errors.items():
        text = " ".join(errors)
        if name == NON_FIELD_ERRORS or name not in form.fields:
            parts.append(text)
        else:
            parts.append(f"{form[name].label}: {text}")
    return "; ".join(parts)


class BriefForm(forms.Form):
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "A summer sale poster, bold type, warm light"}),
        max_length=settings.PROMPT_MAX_LENGTH,
    )
    expected_text = forms.CharField(
        required=False,
        max_length=settings.EXPECTED_TEXT_MAX_LENGTH,
        label="Text that must appear",
        help_text="Exact text the image must render, if any.",
    )
    intent = forms.ChoiceField()
    priority = forms.ChoiceField(
        required=False,
        choices=[("", "The intent's default"), *Priority.choices],
        help_text="Ops and admins may override the intent's priority class.",
    )
    seed = forms.IntegerField(required=False, min_value=0, max_value=2**63 - 1, help_text="Blank: random.")
    steps = forms.IntegerField(required=False, min_value=1, max_value=1000, help_text="Blank: the lane's default.")
    guidance = forms.FloatField(required=False, min_value=0, max_value=100)
    width = forms.IntegerField(required=False, min_value=8, max_value=8192)
    height = forms.IntegerField(required=False, min_value=8, max_value=8192)
    adapters = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="LoRA adapters",
        help_text="Styles the intent's lane offers (its pinned house style applies anyway).",
    )

    def __init__(self, *args, user=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not has_role(user, Role.OPS):
            del self.fields["priority"]
        offered = LaneAdapter.objects.filter(pinned=False, adapter__status=Adapter.Status.VALIDATED).order_by()
        names = sorted(set(offered.values_list("adapter__name", "lane__name")))
        lanes_of: dict[str, list[str]] = {}
        for adapter, lane in names:
            lanes_of.setdefault(adapter, []).append(lane)
        if lanes_of:
            self.fields["adapters"].choices = [(a, f"{a} (on {', '.join(ls)})") for a, ls in lanes_of.items()]
        else:
            del self.fields["adapters"]
        # Sorted here: an ORDER BY would make Django hash each of the ~100 columns these joins select.
        routes = Route.objects.select_related("lane__active_version", "lane__canary_version").order_by()
        self.routes = routes = sorted(routes, key=lambda route: route.intent)
        self.fields["intent"].choices = [
            (r.intent, f"{r.label or r.intent} → {r.lane.name}{'' if r.lane.enabled else ' (disabled)'}")
            for r in routes
        ]
        if not self.is_bound and routes:
            self.fields["intent"].initial = "draft" if any(r.intent == "draft" for r in routes) else routes[0].intent

    @property
    def chosen_intent(self) -> str:
        if self.is_bound:
            return str(self.data.get("intent", ""))
        return str(self.fields["intent"].initial or "")

    def lane_bounds(self) -> list[dict]:
        """What each intent's lane accepts, shown on the form before anything is refused."""
        return [
            {
                "intent": route.intent,
                "lane": route.lane,
                "multiple": size_multiple(route.lane),
                "chosen": route.intent == self.chosen_intent,
            }
            for route in self.routes
        ]

    def clean_prompt(self) -> str:
        prompt = self.cleaned_data["prompt"].strip()
        if not prompt:
            raise forms.ValidationError("Describe the image: the prompt is empty.")
        return prompt

    def submit(self, owner) -> Job | None:
        """Create the job, or put the router's objections on the fields and return None."""
        data = self.cleaned_data
        try:
            return submit_brief(
                owner,
                prompt=data["prompt"],
                expected_text=data.get("expected_text", ""),
                intent=data["intent"],
                seed=data.get("seed"),
                steps=data.get("steps"),
                guidance=data.get("guidance"),
                width=data.get("width"),
                height=data.get("height"),
                priority=data.get("priority") or None,
                adapters=data.get("adapters") or [],
                route=next((r for r in self.routes if r.intent == data["intent"]), None),
            )
        except BriefRejected as exc:
            for field, message in exc.errors.items():
                self.add_error(field if field in self.fields else None, message)
            return None


class RevisionForm(forms.Form):
    """Every lane change carries the revision the user saw, so a concurrent change is refused, not overwritten."""

    revision = forms.IntegerField(widget=forms.HiddenInput, min_value=1)


class LimitsForm(forms.ModelForm):
    revision = forms.IntegerField(widget=forms.HiddenInput, min_value=1)

    class Meta:
        model = Lane
        fields = OPS_FIELDS
        labels = {
            "latency_slo_ms": "Latency SLO (ms)",
            "preemptible": "Preemptible (running jobs pause for a higher class)",
        }


class ModeForm(RevisionForm):
    mode = forms.ChoiceField(choices=[("enabled", "enable"), ("draining", "drain"), ("disabled", "disable")])


class ActivateForm(RevisionForm):
    version = forms.ModelChoiceField(queryset=ModelVersion.objects.none(), to_field_name="name")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["version"].queryset = ModelVersion.objects.filter(family__in=families.text2img_values()).exclude(
            status=ModelVersion.Status.RETIRED
        )
        self.fields["version"].label_from_instance = lambda v: f"{v.name} ({v.get_status_display()})"


class CanaryForm(ActivateForm):
    percent = forms.IntegerField(min_value=1, max_value=99, initial=10, help_text="Share of new jobs, 1–99 %.")


class ShadowForm(ActivateForm):
    percent = forms.IntegerField(
        min_value=1, max_value=100, initial=10, help_text="Share of the lane's briefs rendered again, 1–100 %."
    )


class RolloutStartForm(ActivateForm):
    """Roll a version out by the lane's plan (the version field as the activate form has it)."""


class RolloutPlanForm(RevisionForm):
    # strip=False: a trailing newline keeps the line numbers of errors true to the text pasted.
    plan = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 9, "spellcheck": "false", "class": "mono"}), strip=False,
        max_length=20_000,
        help_text=(
            "YAML: steps (percent 1–99, increasing; min_samples and/or min_minutes each), thresholds, "
            "and optionally require_shadow: true."
        ),
    )  # fmt: skip

    def clean_plan(self):
        text = self.cleaned_data["plan"]
        try:
            self.plan = progressive.plan_from_yaml(text)
        except progressive.PlanError as exc:
            raise forms.ValidationError(exc.errors) from None
        return text


class VersionForm(forms.Form):
    name = forms.SlugField(max_length=100)
    family = forms.ChoiceField(
        required=False,
        choices=[("", "Detect from model_index.json"), *ModelVersion.Family.choices],
        help_text="A hosted engine needs its family chosen; a checkpoint's is read from its files.",
    )
    location = forms.CharField(
        max_length=500, required=False, help_text="A diffusers folder or a .safetensors file under MODELS_ROOT."
    )
    config_location = forms.CharField(
        max_length=500,
        required=False,
        help_text="Single-file checkpoints only: a diffusers folder of the same family holding its configs.",
    )
    dtype = forms.ChoiceField(choices=ModelVersion.DType.choices, help_text="On a CPU worker, float32 always.")
    distilled = forms.TypedChoiceField(
        required=False,
        choices=[("", "Detect (Flux schnell is)"), ("yes", "Yes"), ("no", "No")],
        coerce=lambda value: value == "yes",
        empty_value=None,
        help_text="Timestep-distilled (turbo, lightning, schnell): its lanes default to few steps, little guidance.",
    )
    base_url = forms.CharField(
        max_length=200,
        required=False,
        label="API base URL",
        help_text="Hosted engines: e.g. https://api.openai.com/v1.",
    )
    remote_model = forms.CharField(max_length=200, required=False, label="API model")
    api_key_env = forms.CharField(
        max_length=100,
        required=False,
        label="API key variable",
        help_text="The environment variable holding the key, on the workers and here (the key is never stored).",
    )
    timeout_seconds = forms.FloatField(required=False, min_value=0.1, max_value=3600, initial=60.0)
    max_concurrency = forms.IntegerField(required=False, min_value=1, max_value=256, initial=4)
    price_per_image = forms.FloatField(required=False, min_value=0.0, max_value=1000.0, initial=0.0)

    def clean(self):
        data = super().clean()
        if data.get("family") != ModelVersion.Family.HTTP and not data.get("location"):
            self.add_error("location", "Give the checkpoint's folder or file under MODELS_ROOT.")
        for name in ("timeout_seconds", "max_concurrency", "price_per_image"):
            if data.get(name) is None:
                data[name] = self.fields[name].initial
        return data


class AdapterForm(forms.Form):
    name = forms.SlugField(max_length=100)
    location = forms.CharField(max_length=500, help_text="A LoRA .safetensors file (or its folder) under MODELS_ROOT.")
    default_weight = forms.FloatField(min_value=-4.0, max_value=4.0, initial=1.0)
    description = forms.CharField(max_length=200, required=False)


class LaneAdapterForm(RevisionForm):
    adapter = forms.ModelChoiceField(queryset=Adapter.objects.none())
    weight = forms.FloatField(min_value=-4.0, max_value=4.0, required=False, help_text="Blank: its default weight.")
    pinned = forms.BooleanField(required=False, help_text="Apply to every job on the lane (a house style).")

    def __init__(self, *args, lane: Lane, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        served = [v for v in (lane.active_version_id, lane.canary_version_id) if v]
        self.fields["adapter"].queryset = Adapter.objects.filter(
            version__in=served, status=Adapter.Status.VALIDATED
        ).select_related("version")


class ExperimentForm(forms.Form):
    definition = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 14, "class": "mono"}),
        help_text="YAML: name, samples, seed, prompts, arms (the same file `manage.py run_experiment` takes).",
    )
    definition_file = forms.FileField(required=False, label="…or upload the YAML file")
    prompt_lines = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5}),
        label="More prompts, one per line",
        help_text="Write `prompt || EXPECTED TEXT` for a prompt whose image must carry that text.",
    )
    prompt_file = forms.FileField(required=False, label="…or upload them as a text file")

    MAX_UPLOAD = 1 << 20

    def _read(self, name: str) -> str:
        upload = self.cleaned_data.get(name)
        if not upload:
            return ""
        if upload.size > self.MAX_UPLOAD:
            raise forms.ValidationError({name: "The file is larger than 1 MiB."})
        try:
            return upload.read().decode("utf-8")
        except UnicodeDecodeError:
            raise forms.ValidationError({name: "The file is not UTF-8 text."}) from None

    def clean(self):
        data = super().clean()
        definition = self._read("definition_file") or data.get("definition", "")
        if not definition.strip():
            raise forms.ValidationError({"definition": "Paste the experiment's YAML or upload its file."})
        data["text"] = definition
        data["extra_prompts"] = parse_prompt_lines(data.get("prompt_lines", "") + "\n" + self._read("prompt_file"))
        return data


class ExperimentCanaryForm(forms.Form):
    arm = forms.CharField(max_length=50)
    lane = forms.ModelChoiceField(queryset=Lane.objects.all(), to_field_name="name")
    percent = forms.IntegerField(min_value=1, max_value=99, initial=10)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What it is for, e.g. “CMS export” or “deploy pipeline”.")
    read_only = forms.BooleanField(required=False, help_text="It may read, never change anything.")
    expires_in_days = forms.IntegerField(
        required=False, min_value=1, max_value=3650, help_text="Leave blank for a token that does not expire."
    )


class EndpointForm(forms.Form):
    """A webhook endpoint: admins choose its team, ops register for their own."""

    team = forms.ModelChoiceField(queryset=Team.objects.all(), help_text="Whose events it receives.")
    url = forms.CharField(
        label="URL", max_length=endpoints.URL_MAX_LENGTH, widget=forms.URLInput(attrs={"placeholder": "https://"})
    )
    events = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple, choices=[(name, f"{name}: {text}") for name, text in outbox.EVENTS]
    )
    description = forms.CharField(required=False, max_length=200)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not has_role(user, Role.ADMIN):
            del self.fields["team"]

    def clean_url(self) -> str:
        try:
            return endpoints.clean_url(self.cleaned_data["url"])
        except WebhookError as exc:
            raise forms.ValidationError(str(exc)) from None


class QuotaForm(forms.ModelForm):
    """A team's fair-share weight and quotas, as ops set them on the Teams page."""

    denied_lanes = forms.ModelMultipleChoiceField(
        queryset=Lane.objects.order_by("name"), required=False, widget=forms.CheckboxSelectMultiple,
        label="Lanes denied",
    )  # fmt: skip

    class Meta:
        model = TeamQuota
        fields = [*QUOTA_FIELDS, "denied_lanes"]
        labels = {
            "weight": "Fair-share weight",
            "max_concurrent_soft": "Concurrent jobs (soft)",
            "max_concurrent_hard": "Concurrent jobs (hard)",
            "gpu_seconds_day_soft": "GPU-seconds per day (soft)",
            "gpu_seconds_day_hard": "GPU-seconds per day (hard)",
            "spend_month_soft": "Spend per month (soft)",
            "spend_month_hard": "Spend per month (hard)",
        }

    def clean_weight(self):
        weight = self.cleaned_data["weight"]
        if weight is None or weight <= 0:
            raise forms.ValidationError("The weight must be above 0.")
        return weight

    def clean(self):
        data = super().clean()
        for soft, hard in (
            ("max_concurrent_soft", "max_concurrent_hard"), ("gpu_seconds_day_soft", "gpu_seconds_day_hard"),
            ("spend_month_soft", "spend_month_hard"),
        ):  # fmt: skip
            if data.get(soft) is not None and data.get(hard) is not None and data[soft] > data[hard]:
                self.add_error(soft, "The soft limit is above the hard one.")
        return data
