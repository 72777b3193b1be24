"""The demo's stand-in image API (manage.py serve_images_api), with its real handler."""

from http.server import ThreadingHTTPServer
from types import SimpleNamespace

import httpx
import pytest
from django.core.management import CommandError, call_command

from lanes.management.commands.serve_images_api import ImagesAPIHandler
from lanes.verification import verify_image
from tests.lanes.images_api import register, render, serving


@pytest.fixture
def demo_api():
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), ImagesAPIHandler)) as server:
        yield f"http://127.0.0.1:{server.server_port}/v1"


def test_the_demo_api_renders_the_quoted_text_as_a_poster_the_verifier_can_read(db, demo_api, api_key):
    version = register(demo_api)
    result = render(version, prompt='A shop window poster saying "SUMMER SALE"', width=512, height=256)

    assert result.image.size == (512, 256)
    lane = SimpleNamespace(verify_threshold=0.95, verify_case_sensitive=True, verify_ignore_punctuation=False)
    verdict = verify_image(result.image, ["SUMMER SALE"], lane)
    assert verdict.status == "passed", verdict.reason


def test_the_demo_api_wants_a_key_and_a_size_it_can_render(demo_api):
    url = f"{demo_api}/images/generations"
    body = {"model": "m", "prompt": "p", "n": 1, "size": "256x256", "response_format": "b64_json"}
    with httpx.Client() as http:
        anonymous = http.post(url, json=body)
        assert anonymous.status_code == 401 and "API key" in anonymous.json()["error"]["message"]
        assert http.post(url, json=body, headers={"Authorization": "Basic dTpw"}).status_code == 401
        auth = {"Authorization": "Bearer anything"}
        for size in ("4096x4096", "32x256", "big"):
            refused = http.post(url, json=body | {"size": size}, headers=auth)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "size", size
        ok = http.post(url, json=body, headers=auth)
        assert ok.status_code == 200 and ok.json()["data"][0]["b64_json"]
        assert http.post(f"{demo_api}/elsewhere", json=body, headers=auth).status_code == 404


def test_the_demo_command_says_when_its_port_is_taken(images_api):
    with pytest.raises(CommandError, match=f"Cannot listen on 127.0.0.1:{images_api.server_port}"):
        call_command("serve_images_api", port=images_api.server_port)
