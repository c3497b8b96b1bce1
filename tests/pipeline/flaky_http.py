"""A static HTTP file server on 127.0.0.1 that fails on purpose, for retry tests.

It serves a folder with ``HEAD`` and single-range ``GET`` (what GDAL's
``/vsicurl/`` needs). Each file can be made to fail its next N requests with
HTTP 503 or to send truncated bodies.

The server runs in a child process: GDAL holds the GIL while it opens a
dataset, so a server thread in the test process would never get to respond.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
_CONTROL = re.compile(r"/__control__/(fail|truncate)/(\d+)/(.+)")


class FlakyFileServer:
    """Serve ``root`` over HTTP on 127.0.0.1 with injectable failures.

    Use as a context manager; :meth:`url` gives a file's URL.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> FlakyFileServer:
        self._process = subprocess.Popen(
            [sys.executable, __file__, str(self.root)], stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        self.base_url = self._process.stdout.readline().strip()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._process is not None
        self._process.terminate()
        self._process.wait(timeout=10)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def fail_next(self, name: str, count: int) -> None:
        """Respond to the next ``count`` requests for ``name`` with HTTP 503."""
        urllib.request.urlopen(f"{self.base_url}/__control__/fail/{count}/{name}").read()

    def truncate_next(self, name: str, count: int) -> None:
        """Send only half the body of the next ``count`` ranged GETs of ``name``."""
        urllib.request.urlopen(f"{self.base_url}/__control__/truncate/{count}/{name}").read()

    def requests(self) -> list[list[str]]:
        """Every ``[method, name, status]`` served so far, in order."""
        return json.loads(urllib.request.urlopen(f"{self.base_url}/__requests__").read())


def _serve(root: Path) -> None:
    failures: dict[str, int] = {}
    truncations: dict[str, int] = {}
    log: list[list[str]] = []
    lock = threading.Lock()

    def take(table: dict[str, int], name: str) -> bool:
        with lock:
            if table.get(name, 0) > 0:
                table[name] -= 1
                return True
            return False

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _reply_empty(self, status: int, payload: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _serve(self, body: bool) -> None:
            control = _CONTROL.fullmatch(self.path)
            if control:
                kind, count, name = control.groups()
                with lock:
                    (failures if kind == "fail" else truncations)[name] = int(count)
                self._reply_empty(200)
                return
            if self.path == "/__requests__":
                with lock:
                    self._reply_empty(200, json.dumps(log).encode())
                return

            name = self.path.lstrip("/")
            if take(failures, name):
                log.append([self.command, name, "503"])
                self._reply_empty(503)
                return
            path = root / name
            if not path.is_file():
                log.append([self.command, name, "404"])
                self._reply_empty(404)
                return

            size = os.path.getsize(path)
            start, stop = 0, size - 1
            match = _RANGE.fullmatch(self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                stop = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
            length = stop - start + 1
            truncated = body and match is not None and take(truncations, name)
            log.append([self.command, name, "truncated" if truncated else ("206" if match else "200")])
            self.send_response(206 if match else 200)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            if match:
                self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
            self.end_headers()
            if not body:
                return
            with open(path, "rb") as handle:
                handle.seek(start)
                data = handle.read(length)
            if truncated:
                self.wfile.write(data[: length // 2])
                self.close_connection = True
                return
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    host, port = server.server_address[:2]
    print(f"http://{host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
