"""A tiny local server that answers the Hugging Face hub's resolve API (HEAD/GET
/{repo}/resolve/{revision}/{file}) the way huggingface.co does, so huggingface_hub's own download
and cache code runs unmodified against it (offline: 127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


@dataclass
class FakeRepo:
    commit: str
    files: dict[str, Path] = field(default_factory=dict)
    # (status, X-Error-Code, X-Error-Message) answered instead of the files, e.g. (403, "GatedRepo", "").
    error: tuple[int, str, str] | None = None


class HubServer:
    def __init__(self, repos: dict[str, FakeRepo]):
        self.repos = repos
        self.requests: list[str] = []
        self.auth: list[str | None] = []  # Authorization header of each request
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def do_POST(self):
                # Uploads (create_repo, commits) are not served: answered as a token without write access.
                server.requests.append(f"POST {self.path}")
                server.auth.append(self.headers.get("Authorization"))
                self._fail(403, "", "You don't have the rights to create a model under this namespace")

            def _fail(self, status: int, code: str, message: str = "", commit: str | None = None):
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                if message:
                    self.send_header("X-Error-Message", message)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _answer(self, body: bool):
                server.requests.append(f"{self.command} {self.path}")
                server.auth.append(self.headers.get("Authorization"))
                parts = unquote(self.path.split("?")[0]).lstrip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    return self._repo_info(parts[2:], body)
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._fail(404, "RepoNotFound")
                repo_id, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                repo = server.repos.get(repo_id)
                if repo is None:
                    return self._fail(401, "RepoNotFound")
                if repo.error:
                    return self._fail(*repo.error)
                if revision not in ("main", repo.commit):
                    return self._fail(404, "RevisionNotFound")
                if name not in repo.files:
                    return self._fail(404, "EntryNotFound", commit=repo.commit)
                data = repo.files[name].read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", repo.commit)
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _repo_info(self, parts: list[str], body: bool):
                # GET /api/models/{repo}[/revision/{rev}]: what snapshot_download asks first.
                repo = server.repos.get("/".join(parts[:2]))
                if repo is None:
                    return self._fail(401, "RepoNotFound")
                if repo.error:
                    return self._fail(*repo.error)
                if len(parts) > 3 and parts[3] not in ("main", repo.commit):
                    return self._fail(404, "RevisionNotFound")
                data = json.dumps(
                    {"id": "/".join(parts[:2]), "sha": repo.commit, "siblings": [{"rfilename": f} for f in repo.files]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
