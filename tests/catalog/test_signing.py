"""Planetary Computer hrefs signed at read time, against a token server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from catalog import sign_planetary_computer_href
from catalog import signing

BLOB = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/06/V/VN/2019/06/29/B04_10m.tif"


@pytest.fixture
def token_server() -> Iterator[tuple[str, list[str], dict]]:
    """A SAS token API on 127.0.0.1: (endpoint URL, request paths, settings the test can change)."""
    paths: list[str] = []
    settings = {"status": 200, "lifetime": timedelta(hours=1)}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server naming
            paths.append(self.path)
            expiry = datetime.now(timezone.utc) + settings["lifetime"]
            body = {"msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": f"sv=2024&sig=call{len(paths)}"}
            data = json.dumps(body if settings["status"] == 200 else {"error": "denied"}).encode()
            self.send_response(settings["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    signing._tokens.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/sas/v1/token", paths, settings
    finally:
        server.shutdown()
        server.server_close()
        signing._tokens.clear()


def test_blob_href_signed_and_token_cached(token_server):
    endpoint, paths, _ = token_server

    first = sign_planetary_computer_href(BLOB, token_endpoint=endpoint)
    second = sign_planetary_computer_href(BLOB.replace("B04", "B03"), token_endpoint=endpoint)

    assert first == BLOB + "?sv=2024&sig=call1"
    assert second.endswith("B03_10m.tif?sv=2024&sig=call1")
    assert paths == ["/api/sas/v1/token/sentinel2l2a01/sentinel2-l2"]


def test_token_renewed_before_expiry(token_server):
    endpoint, paths, settings = token_server
    settings["lifetime"] = timedelta(minutes=2)  # inside the renewal margin

    sign_planetary_computer_href(BLOB, token_endpoint=endpoint)
    signed = sign_planetary_computer_href(BLOB, token_endpoint=endpoint)

    assert signed.endswith("sig=call2")
    assert len(paths) == 2


@pytest.mark.parametrize(
    "href",
    [
        "/data/scene/B04.tif",
        "s3://sentinel-cogs/B04.tif",
        "https://sentinel-cogs.s3.us-west-2.amazonaws.com/B04.tif",
        BLOB + "?sv=already-signed",
    ],
)
def test_other_hrefs_unchanged(token_server, href):
    endpoint, paths, _ = token_server

    assert sign_planetary_computer_href(href, token_endpoint=endpoint) == href
    assert paths == []


def test_token_failure_names_url(token_server):
    endpoint, _, settings = token_server
    settings["status"] = 429

    with pytest.raises(RuntimeError, match=rf"{endpoint}/sentinel2l2a01/sentinel2-l2 failed with HTTP 429"):
        sign_planetary_computer_href(BLOB, token_endpoint=endpoint)
