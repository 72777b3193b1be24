"""Property-based fuzzing of every console page: random query and form values (unicode, NUL, huge
numbers, wrong types, unknown fields) for every URL of the role matrix, as each role. No answer may be
a server error. Marked `fuzz` (slow): `pytest -m "not fuzz"` skips it locally; CI runs it."""

import os

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.console.test_access_matrix import MATRIX, world  # noqa: F401  (world: a fixture)

pytestmark = [pytest.mark.django_db, pytest.mark.fuzz]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))  # per page and role: about 2,200 requests a pass
QUERY_KEYS = [
    "state",
    "page",
    "lane",
    "version",
    "age",
    "reason",
    "window",
    "part",
    "baseline",
    "user",
    "action",
    "new",
]
FORM_KEYS = [
    "prompt", "intent", "expected_text", "priority", "seed", "steps", "guidance", "width", "height", "adapters",
    "revision", "mode", "max_concurrency", "defer_depth", "hard_cap", "latency_slo_ms", "canary_min_samples",
    "canary_window_minutes", "canary_max_p95_ratio", "version", "percent", "name", "family", "location",
    "config_location", "dtype", "distilled", "base_url", "remote_model", "api_key_env", "timeout_seconds",
    "price_per_image", "definition", "prompt_lines", "lane", "arm", "ids", "action", "policy", "based_on",
    "consume", "enabled", "next", "url", "events", "team", "description", "read_only", "expires_in_days",
    "adapter", "weight", "pinned", "default_weight",
]  # fmt: skip
# Control commands wait for live workers' answers: their refusals are tested elsewhere, not fuzzed for time.
SKIP = {"workers-reload", "worker-consume", "logout"}
# Words the views act on, so a fuzzed form gets past "unknown action" to the code behind it.
WORDS = ["approve", "reject", "autofix", "rerender", "draining", "disabled", "enabled", "draft", "preview",
         "fast-draft", "demo-tiny-sd-v1", "on", "true", "sd15", "job.failed", "1", "0", "-1"]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=40),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "9" * 30, "1e309", "²", "١٢", "\x00", "a" * 5000, "../../etc/passwd", "[1, 2]", "{}"]),
)
FIELDS = st.one_of(VALUES, st.lists(VALUES, min_size=2, max_size=3))  # a field sent twice or more
NAMES = sorted(name for name in MATRIX if name not in SKIP)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("role", ["creative", "ops", "admin"])
def test_no_page_answers_a_server_error_to_any_input(client, world, role, name):  # noqa: F811
    users, kwargs = world
    client.force_login(users[role])
    url = reverse(name, kwargs=kwargs.get(name))
    method = MATRIX[name][0]
    failures = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(
        query=st.fixed_dictionaries({}, optional={key: VALUES for key in QUERY_KEYS}),
        form=st.fixed_dictionaries({}, optional={key: FIELDS for key in FORM_KEYS}),
        extra=st.dictionaries(st.text(min_size=1, max_size=8), VALUES, max_size=2),
    )
    def probe(query, form, extra):
        response = client.get(url, {**query, **extra}) if method == "GET" else client.post(url, {**form, **extra})
        if response.status_code >= 500:
            failures.append((query, form, extra, response.status_code))

    probe()
    assert failures[:3] == []
