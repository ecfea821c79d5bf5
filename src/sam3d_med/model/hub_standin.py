"""A local stand-in for the part of the Hugging Face Hub HTTP API that ``hf_hub_download`` uses.

Serves ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}`` on 127.0.0.1 with the headers the
client reads (ETag, X-Repo-Commit, Content-Length), byte ranges for resumed transfers, and the Hub's
answers for a gated repository (``token`` given): 401 "GatedRepo" when the request carries no token,
401 "Invalid credentials" for a token that is not the valid one, 403 "GatedRepo" for the valid token
when it has not been granted access (``granted=False``). For tests, a transfer can break off after a
given number of bytes the first time a file is sent (``break_after``), or be served slowly
(``bytes_per_second``); ``bytes_served`` counts the body bytes sent per file.

The demo serves the rehearsal release with it (``sam3d-med serve-release``) so that step 1 runs the
real download code against a Hub on this machine: ``HF_ENDPOINT=<its address>``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStub:
    def __init__(self, repo_id: str, files: dict[str, bytes], token: str | None = None,
                 granted: bool = True, break_after: dict[str, int] | None = None,
                 bytes_per_second: float | None = None):
        self.repo_id, self.files, self.token, self.granted = repo_id, files, token, granted
        self.break_after = dict(break_after or {})
        self.bytes_per_second = bytes_per_second
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.bytes_served: dict[str, int] = {}
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                stub._answer(self, head=True)

            def do_GET(self):
                stub._answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _error(self, handler, status: int, code: str, message: str) -> None:
        body = message.encode()
        handler.send_response(status)
        if code:
            handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", message)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _answer(self, handler, head: bool) -> None:
        self.requests.append((handler.command, handler.path, handler.headers.get("Range")))
        match = re.fullmatch(rf"/{re.escape(self.repo_id)}/resolve/([^/]+)/(.+)", handler.path.split("?")[0])
        if not match:
            return self._error(handler, 404, "RepoNotFound", "Repository not found")
        auth = handler.headers.get("Authorization")
        if self.token is not None:  # a gated repository, as the Hub answers for one
            if auth is None:
                return self._error(handler, 401, "GatedRepo", f"Access to model {self.repo_id} is restricted. You must "
                                   "have access to it and be authenticated to access it. Please log in.")
            if auth != f"Bearer {self.token}":
                return self._error(handler, 401, "", "Invalid credentials in Authorization header")
            if not self.granted:
                return self._error(handler, 403, "GatedRepo", f"Access to model {self.repo_id} is restricted and you "
                                   "are not in the authorized list.")
        path = match.group(2)
        if path not in self.files:
            return self._error(handler, 404, "EntryNotFound", f"{path} does not exist")
        data = self.files[path]
        start = 0
        range_header = handler.headers.get("Range")
        if range_header and not head:
            start = int(re.match(r"bytes=(\d+)-", range_header).group(1))
        handler.send_response(206 if start else 200)
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(data) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if head:
            return
        cut = self.break_after.pop(path, None)
        body = data[start:] if cut is None else data[start:start + cut]
        try:
            self._send(handler, path, body)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (an interrupted download)
            return
        if cut is not None:  # part of the body sent: drop the connection
            handler.close_connection = True
            handler.connection.shutdown(2)

    def _send(self, handler, path: str, body: bytes) -> None:
        """Write ``body``, at ``bytes_per_second`` when set, counting what was sent."""
        chunk = len(body) if not self.bytes_per_second else max(1, int(self.bytes_per_second / 20))
        for offset in range(0, len(body), chunk):
            piece = body[offset:offset + chunk]
            handler.wfile.write(piece)
            handler.wfile.flush()
            self.bytes_served[path] = self.bytes_served.get(path, 0) + len(piece)
            if self.bytes_per_second:
                time.sleep(len(piece) / self.bytes_per_second)


def repository_files(folder: str | Path) -> dict[str, bytes]:
    """Every file under ``folder`` keyed by its path relative to it (the repository's layout)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
