"""The API describes itself: an OpenAPI 3.1 document, and a docs page whose assets are served locally."""

import re

import pytest

pytestmark = pytest.mark.django_db


def test_the_openapi_document_is_3_1_and_documents_problems_and_security(client):
    spec = client.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["BearerToken"] == {"type": "http", "scheme": "bearer"}
    submit = spec["paths"]["/api/v1/jobs"]["post"]
    assert {"202", "401", "422", "429"} <= set(submit["responses"])
    assert "application/problem+json" in submit["responses"]["422"]["content"]


def test_the_docs_page_loads_swagger_from_laneway_itself(client, users):
    client.force_login(users["creative"])
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert any("swagger-ui-bundle.js" in s for s in sources)
    assert all(not s.startswith(("http://", "https://", "//")) for s in sources), sources
    for asset in (s for s in sources if s.endswith((".js", ".css"))):
        assert client.get(asset).status_code == 200, asset
