"""A local HTTP receiver of notifications on 127.0.0.1 for tests of the daemon as a process."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Records every POST (path, JSON body); answers 500 to the first one on /flaky."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.received.append((self.path, body))
                    first = sum(1 for p, _ in outer.received if p.startswith("/flaky")) == 1
                self.send_response(500 if first and self.path.startswith("/flaky") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, prefix: str, env: str | None) -> list[dict[str, Any]]:
        """The bodies POSTed under `prefix` (about `env`; None: any), in order, retries included."""
        with self.lock:
            return [b for p, b in self.received if p.startswith(prefix) and env in (None, b.get("environment"))]

    def slack(self) -> list[str]:
        with self.lock:
            return [b["text"] for p, b in self.received if p.startswith("/services/")]
