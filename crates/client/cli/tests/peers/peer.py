#!/usr/bin/env python3
"""Real storage servers for the connector tests, on 127.0.0.1 and a port the OS picks.

    peer.py webdav DIR ROOT CERT KEY [MAX_RPS]
                                      wsgidav over HTTPS (basic auth) serving ROOT; with MAX_RPS, a server that
                                      protects itself: past MAX_RPS requests in the last second it answers
                                      429 Too Many Requests with Retry-After: 1, and counts in DIR/stats.json
    peer.py ftp DIR ROOT              pyftpdlib, plain FTP
    peer.py ftps DIR ROOT CERT KEY    pyftpdlib with TLS required on control and data connections

Each writes DIR/peer.json ({"port": ..., and credentials}) once it serves, then runs until killed.
"""
import collections
import json
import os
import sys
import threading
import time


def ready(dir_, info):
    tmp = os.path.join(dir_, "peer.json.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.rename(tmp, os.path.join(dir_, "peer.json"))


class RateLimit:
    """WSGI middleware: at most `max_rps` requests admitted in any one-second window; the rest get 429."""

    def __init__(self, app, max_rps, stats_path):
        self.app, self.max_rps, self.stats_path = app, max_rps, stats_path
        self.lock = threading.Lock()
        self.admitted = collections.deque()
        self.stats = {"admitted": 0, "refused": 0}
        self.write_stats()

    def write_stats(self):
        tmp = self.stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.stats, f)
        os.rename(tmp, self.stats_path)

    def __call__(self, environ, start_response):
        with self.lock:
            now = time.monotonic()
            while self.admitted and now - self.admitted[0] >= 1.0:
                self.admitted.popleft()
            ok = len(self.admitted) < self.max_rps
            if ok:
                self.admitted.append(now)
            self.stats["admitted" if ok else "refused"] += 1
            self.write_stats()
        if ok:
            return self.app(environ, start_response)
        body = b"slow down"
        start_response("429 Too Many Requests", [("Retry-After", "1"), ("Content-Type", "text/plain"),
                                                 ("Content-Length", str(len(body)))])
        return [body]


def webdav(dir_, root, cert, key, max_rps=None):
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter
    from wsgidav.wsgidav_app import WsgiDAVApp

    app = WsgiDAVApp({
        "provider_mapping": {"/dav": root},
        "http_authenticator": {"domain_controller": None, "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False},
        "simple_dc": {"user_mapping": {"*": {"alice": {"password": "dav secret 1"}}}},
        "verbose": 1,
        "logging": {"enable": False},
    })
    if max_rps is not None:
        app = RateLimit(app, int(max_rps), os.path.join(dir_, "stats.json"))
    server = wsgi.Server(("127.0.0.1", 0), app)
    server.ssl_adapter = BuiltinSSLAdapter(cert, key)
    server.prepare()
    port = server.bind_addr[1]
    ready(dir_, {"port": port, "user": "alice", "secret": "dav secret 1"})
    server.serve()


def ftp(dir_, root):
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    auth = DummyAuthorizer()
    auth.add_user("bob", "ftp secret 1", root, perm="elradfmwMT")
    handler = FTPHandler
    handler.authorizer = auth
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    ready(dir_, {"port": port, "user": "bob", "secret": "ftp secret 1"})
    server.serve_forever()


def ftps(dir_, root, cert, key):
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import TLS_FTPHandler
    from pyftpdlib.servers import FTPServer

    auth = DummyAuthorizer()
    auth.add_user("bob", "ftp secret 1", root, perm="elradfmwMT")
    handler = TLS_FTPHandler
    handler.certfile = cert
    handler.keyfile = key
    handler.tls_control_required = True
    handler.tls_data_required = True
    handler.authorizer = auth
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    ready(dir_, {"port": port, "user": "bob", "secret": "ftp secret 1"})
    server.serve_forever()


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    {"webdav": webdav, "ftp": ftp, "ftps": ftps}[kind](*args)
