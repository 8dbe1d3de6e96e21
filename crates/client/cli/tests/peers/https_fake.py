"""What the fakes of HTTPS services (clouds.py, synology.py) share: the request handler's plumbing, the HTTPS
server on a free port of 127.0.0.1 with the test CA's certificate, and the files a test reads (peer.json once
serving, stats.json after every request), each written whole under a temporary name and renamed."""
import json
import os
import ssl
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def write_json(dir, name, obj):
    tmp = os.path.join(dir, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, os.path.join(dir, name))


class Handler(BaseHTTPRequestHandler):
    """Reads a request's body (chunked or not) and hands it to `self.server.app.handle(...)` through
    `answer(request)`, which a fake defines; the answer (`status`, `headers`, `body`) is sent back."""

    protocol_version = "HTTP/1.1"
    server_version = "fake/1"
    tag = "fake"

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            self.request.do_handshake()  # here, in the connection's thread, not in the accepting one
            super().handle()
        except (ssl.SSLError, ConnectionError):
            pass

    def read_exactly(self, n):
        data = self.rfile.read(n)
        if len(data) < n:
            raise ConnectionError(f"the body broke off after {len(data)} of {n} bytes")
        return data

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while n := int(self.rfile.readline().split(b";")[0], 16):
                out += self.read_exactly(n)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.read_exactly(n) if n else b""

    def dispatch(self):
        try:
            body = self.read_body()
        except (OSError, ValueError):
            # The client went away before the body was whole: as a server does, nothing of it is taken.
            self.close_connection = True
            return
        try:
            ans = self.answer(body)
        except Exception:
            print(f"{self.tag}: {self.command} {self.path}: internal error\n{traceback.format_exc()}",
                  file=sys.stderr, flush=True)
            ans = self.internal_error()
        self.send_response(ans.status)
        for k, v in ans.headers.items():
            self.send_header(k, v)
        if ans.status not in (204, 304):
            self.send_header("Content-Length", str(len(ans.body)))
        self.end_headers()
        if ans.status not in (204, 304):
            self.wfile.write(ans.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = dispatch


def serve(handler, app, dir, cert, key, info):
    """Serves `app` (as `server.app`) with `handler` over HTTPS; `info(port)` is what peer.json says."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.app = app
    write_json(dir, "peer.json", info(server.server_address[1]))
    server.serve_forever()
