"""A local stand-in for the part of the Hugging Face Hub HTTP API that ``hf_hub_download`` uses.

Serves ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}`` on 127.0.0.1 with the headers the
client reads (ETag, X-Repo-Commit, Content-Length), byte ranges for resumed transfers, 401 without
the expected token, 403 "GatedRepo" for a token without access, and (for tests) a transfer that
breaks off after a given number of bytes the first time a file is sent.

The demo serves the rehearsal release with it (``sam3d-med serve-release``) so that step 1 runs the
real download code against a Hub on this machine: ``HF_ENDPOINT=<its address>``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStub:
    def __init__(self, repo_id: str, files: dict[str, bytes], token: str | None = None,
                 granted: bool = True, break_after: dict[str, int] | None = None):
        self.repo_id, self.files, self.token, self.granted = repo_id, files, token, granted
        self.break_after = dict(break_after or {})
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
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
        if self.token is not None and auth != f"Bearer {self.token}":
            if auth is None or not self.granted:
                return self._error(handler, 401, "RepoNotFound", "Access to this repository is restricted.")
        if not self.granted:
            return self._error(handler, 403, "GatedRepo", "Access to model is restricted and you are not in the authorized list.")
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
        if cut is not None:  # send part of the body, then drop the connection
            handler.wfile.write(data[start:start + cut])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        handler.wfile.write(data[start:])


def repository_files(folder: str | Path) -> dict[str, bytes]:
    """Every file under ``folder`` keyed by its path relative to it (the repository's layout)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
