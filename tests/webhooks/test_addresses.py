"""SSRF: webhooks reach public http(s) addresses only, unless WEBHOOK_ALLOWED_HOSTS names a private one."""

import socket

import pytest

from webhooks.addresses import check_url, pinned_url
from webhooks.endpoints import create_endpoint
from webhooks.models import WebhookError

REFUSED = [
    ("http://127.0.0.1:8000/hooks", "loopback"),
    ("http://10.1.2.3/hooks", "private"),
    ("http://192.168.1.20/hooks", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::1]:8000/hooks", "loopback"),
    ("http://[::ffff:127.0.0.1]/hooks", "loopback"),
    ("http://[2002:7f00:1::]/hooks", "loopback"),  # 6to4 around 127.0.0.1
    ("http://[2002:a9fe:a9fe::]/hooks", "link-local"),  # 6to4 around 169.254.169.254
    ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/hooks", "private"),  # Teredo, client 10.0.0.1
    ("http://0.0.0.0/hooks", "unspecified"),
    ("http://224.0.0.1/hooks", "multicast"),
    ("http://localhost:8000/hooks", "loopback"),  # a name that resolves to loopback
]


def resolver(*addresses):
    def resolve(host, port, type=0):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, port)) for a in addresses]

    return resolve


@pytest.mark.parametrize("url,kind", REFUSED)
def test_a_private_address_is_refused_without_the_allow_list(settings, url, kind):
    settings.WEBHOOK_ALLOWED_HOSTS = ()
    with pytest.raises(
        WebhookError, match=rf"is not a public address \({kind}\): webhooks go to public addresses only"
    ):
        check_url(url)


@pytest.mark.parametrize("url,kind", REFUSED[:1] + REFUSED[2:3])
def test_registration_refuses_a_private_address_with_the_reason(settings, team, url, kind):
    settings.WEBHOOK_ALLOWED_HOSTS = ()
    with pytest.raises(WebhookError, match=kind):
        create_endpoint(team, url, ["job.succeeded"], by=None)


def test_a_host_with_any_private_address_is_refused(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ()
    with pytest.raises(WebhookError, match=r"hooks.example.com \(10.0.0.7\) is not a public address \(private\)"):
        check_url("https://hooks.example.com/x", resolve=resolver("93.184.216.34", "10.0.0.7"))


def test_a_public_address_is_accepted_and_the_request_is_pinned_to_it(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ()
    target = check_url("https://hooks.example.com:8443/in?x=1", resolve=resolver("93.184.216.34"))
    assert (target.host, target.address) == ("hooks.example.com", "93.184.216.34")
    assert pinned_url(target) == "https://93.184.216.34:8443/in?x=1"
    v6 = check_url("http://hooks.example.com/in", resolve=resolver("2606:4700::6810:85e5"))
    assert pinned_url(v6) == "http://[2606:4700::6810:85e5]/in"


@pytest.mark.parametrize(
    "allowed,url",
    [
        (("127.0.0.1",), "http://127.0.0.1:9000/hooks"),
        (("10.0.0.0/8",), "http://10.20.30.40/hooks"),
        (("localhost",), "http://localhost:9000/hooks"),
        (("::1",), "http://[::1]:9000/hooks"),
    ],
)
def test_the_allow_list_names_hosts_addresses_and_networks(settings, allowed, url):
    settings.WEBHOOK_ALLOWED_HOSTS = allowed
    assert check_url(url).url == url


@pytest.mark.parametrize(
    "url,message",
    [
        ("ftp://hooks.example.com/x", "Only http:// and https://"),
        ("file:///etc/passwd", "Only http:// and https://"),
        ("https://user:secret@hooks.example.com/x", "must not contain a user name or password"),
        ("https:///nohost", "has no host"),
        ("http://hooks.invalid/x", "cannot be resolved"),
        ("http://[::1/x", "Not a valid URL"),
    ],
)
def test_other_unusable_urls_are_refused_with_the_reason(url, message):
    with pytest.raises(WebhookError, match=message):
        check_url(url)
