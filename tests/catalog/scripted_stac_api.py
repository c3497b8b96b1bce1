"""A tiny STAC API on 127.0.0.1 whose responses a test scripts: failures, slow responses, faulty paging.

Real servers do not fail on demand, so the retry and paging-fault tests use
this one; everything else runs against the pgstac server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CORE = "https://api.stacspec.org/v1.0.0/core"
ITEM_SEARCH = "https://api.stacspec.org/v1.0.0/item-search"
QUERY = "https://api.stacspec.org/v1.0.0/item-search#query"


@dataclass
class Script:
    """What the server does.

    ``failures`` lists, in order, the HTTP statuses (or ``"slow"`` for a
    response after ``slow_s`` seconds) of the first requests. With
    ``fail_always`` every request fails with that status, with
    ``fail_searches`` every search request (the landing page still works).
    ``pages`` are the feature lists of successive search pages. Each further
    pass from the first page serves the next entry of ``later_passes``
    instead, while there is one. ``number_matched`` is reported on each page.
    """

    failures: list[int | str] = field(default_factory=list)
    fail_always: int | None = None
    fail_searches: int | None = None
    slow_s: float = 1.0
    pages: list[list[dict[str, Any]]] = field(default_factory=list)
    later_passes: list[list[list[dict[str, Any]]]] = field(default_factory=list)
    number_matched: int | None = None
    conforms_to: list[str] = field(default_factory=lambda: [CORE, ITEM_SEARCH])
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    passes_started: int = 0


def make_item(item_id: str, cloud_cover: float | None = 10.0) -> dict[str, Any]:
    """A minimal Sentinel-2 L2A item with one band asset."""
    properties: dict[str, Any] = {
        "datetime": "2024-05-01T10:00:00Z",
        "platform": "sentinel-2a",
        "instruments": ["msi"],
        "s2:processing_baseline": "05.10",
    }
    if cloud_cover is not None:
        properties["eo:cloud_cover"] = cloud_cover
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
        "bbox": [0, 0, 1, 1],
        "properties": properties,
        "assets": {"red": {"href": f"https://example.invalid/{item_id}/B04.tif", "roles": ["data"]}},
        "links": [],
    }


def _handler(script: Script, base_url: list[str]) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _scripted_failure(self) -> bool:
            with lock:
                action = script.failures.pop(0) if script.failures else None
            if script.fail_always is not None:
                action = script.fail_always
            if script.fail_searches is not None and self.command == "POST":
                action = script.fail_searches
            if action == "slow":
                time.sleep(script.slow_s)
                return False
            if isinstance(action, int):
                self._send(action, {"code": "ScriptedFailure", "description": f"scripted HTTP {action}"})
                return True
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            script.requests.append(("GET", self.path, None))
            if self._scripted_failure():
                return
            root = base_url[0]
            self._send(200, {
                "type": "Catalog", "stac_version": "1.0.0", "id": "scripted", "description": "scripted STAC API",
                "conformsTo": script.conforms_to,
                "links": [
                    {"rel": "self", "href": root + "/"},
                    {"rel": "root", "href": root + "/"},
                    {"rel": "search", "href": root + "/search", "method": "POST", "type": "application/geo+json"},
                ],
            })

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            script.requests.append(("POST", self.path, body))
            if self._scripted_failure():
                return
            page = int(body.get("token", 0))
            if page == 0:
                with lock:
                    if script.passes_started and script.later_passes:
                        script.pages = script.later_passes.pop(0)
                    script.passes_started += 1
            features = script.pages[page] if page < len(script.pages) else []
            links = []
            if page + 1 < len(script.pages):
                links.append({"rel": "next", "href": base_url[0] + "/search", "method": "POST",
                              "body": {**body, "token": str(page + 1)}, "merge": False})
            response: dict[str, Any] = {"type": "FeatureCollection", "features": features, "links": links}
            if script.number_matched is not None:
                response["numberMatched"] = script.number_matched
            self._send(200, response)

    return Handler


@contextmanager
def scripted_stac_api(script: Script) -> Iterator[str]:
    """Serve ``script`` on a free 127.0.0.1 port; yield the API root URL."""
    base_url: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script, base_url))
    base_url.append(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base_url[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
