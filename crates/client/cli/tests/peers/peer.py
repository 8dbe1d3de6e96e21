#!/usr/bin/env python3
"""Real storage servers for the connector tests, on 127.0.0.1 and a port the OS picks.

    peer.py webdav DIR ROOT CERT KEY [MAX_RPS]
                                      wsgidav over HTTPS (basic auth) serving ROOT; with MAX_RPS, a server that
                                      protects itself: past MAX_RPS requests in the last second it answers
                                      429 Too Many Requests with Retry-After: 1, and counts in DIR/stats.json
    peer.py ftp DIR ROOT              pyftpdlib, plain FTP
    peer.py ftps DIR ROOT CERT KEY    pyftpdlib with TLS required on control and data connections
    peer.py moto DIR                  moto's S3 with its IAM authentication on: every request must carry a valid
                                      SigV4 signature of an access key moto issued (the first four requests,
                                      unauthenticated, make that key's user and its s3:* policy); buckets "backup"
                                      and "history" (versioned)

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


class RecordPuts:
    """Appends each PUT's path, Content-Length and Transfer-Encoding to a JSON-lines file. While a file
    `fail-next-put` is in the peer's folder, the next PUT is read whole and answered 503 (and the file goes)."""

    def __init__(self, app, path):
        self.app, self.path = app, path
        self.trigger = os.path.join(os.path.dirname(path), "fail-next-put")

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "PUT":
            with open(self.path, "a") as f:
                f.write(json.dumps({
                    "path": environ.get("PATH_INFO"),
                    "content_length": environ.get("CONTENT_LENGTH"),
                    "transfer_encoding": environ.get("HTTP_TRANSFER_ENCODING"),
                }) + "\n")
            if os.path.exists(self.trigger):
                os.remove(self.trigger)
                left = int(environ.get("CONTENT_LENGTH") or 0)
                while left > 0:
                    got = environ["wsgi.input"].read(min(left, 1 << 20))
                    if not got:
                        break
                    left -= len(got)
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"failing this PUT on purpose"]
        return self.app(environ, start_response)


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
    app = RecordPuts(app, os.path.join(dir_, "puts.jsonl"))
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


def moto(dir_):
    # Without this, moto takes any credentials and a signing bug would go unseen; it is read at import.
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "4"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    import boto3
    from moto.s3.responses import S3Response
    from moto.server import ThreadedMotoServer

    # moto checks a signature against the query as Werkzeug rebuilt it, with escapes undone ("delimiter=/"),
    # where SigV4's canonical request has every query value escaped ("delimiter=%2F"): it refuses every listing
    # with a delimiter, boto3's too. AWS escapes the query the SigV4 way before checking; so does this.
    from urllib.parse import quote, unquote
    setup_class = S3Response.setup_class

    def sigv4_escaped(raw):
        def esc(part):
            return quote(unquote(part), safe="-_.~")
        pairs = []
        for pair in raw.split("&"):
            key, eq, value = pair.partition("=")
            pairs.append(esc(key) + eq + esc(value))
        return "&".join(pairs)

    def setup_with_raw_query(self, request, full_url, headers):
        setup_class(self, request, full_url, headers)
        raw = getattr(request, "environ", {}).get("QUERY_STRING")
        if raw:
            self.uri = self.uri.split("?", 1)[0] + "?" + sigv4_escaped(raw)

    S3Response.setup_class = setup_with_raw_query

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    url = f"http://127.0.0.1:{port}"
    anon = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="cloudsync")
    arn = iam.create_policy(PolicyName="s3-all", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }))["Policy"]["Arn"]
    iam.attach_user_policy(UserName="cloudsync", PolicyArn=arn)
    key = iam.create_access_key(UserName="cloudsync")["AccessKey"]
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                      aws_secret_access_key=key["SecretAccessKey"])
    s3.create_bucket(Bucket="backup")
    s3.create_bucket(Bucket="history")
    s3.put_bucket_versioning(Bucket="history", VersioningConfiguration={"Status": "Enabled"})
    ready(dir_, {"port": port, "access_key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]})
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    kind, args = sys.argv[1], sys.argv[2:]
    {"webdav": webdav, "ftp": ftp, "ftps": ftps, "moto": moto}[kind](*args)
