#!/usr/bin/env python3
"""Fake Dropbox, OneDrive (Microsoft Graph) and pCloud servers for the connector tests, on 127.0.0.1 over HTTPS.

    clouds.py PROVIDER DIR ROOT CERT KEY [--token-ttl SECONDS] [--rate-limit N] [--max-upload BYTES]
                                         [--single-use-refresh] [--drop-session-answers N]
                                         [--drop-finish-answers N] [--fail-uploads N]

PROVIDER is dropbox, onedrive or pcloud. One port answers every host of that provider (API, content, sign-in,
download and upload addresses) at the paths the real services use; the client rewrites the hosts. Files live on
disk under ROOT (ROOT/a/b.txt is the remote /a/b.txt), so a test can compare trees. Once serving, the peer writes
DIR/peer.json ({"port", "client_id", and "client_secret" for pcloud}) and rewrites DIR/stats.json (counters)
after every request, with the first tokens it issued (refresh_tokens, access_tokens) so a test can check they
are kept out of files, and counters of what a correct client never does (password_in_url, client_secret_refused,
uploads_keeping_partial). Each provider also names the signed-in account (alice@example.com) at its documented
endpoint: Dropbox users/get_current_account, Graph /v1.0/me, pCloud userinfo. What the real API refuses is refused here in the provider's error shape; what this fake
does not expect is answered 400 (unknown paths 404) and logged to stderr, so a failing test shows what was sent.

dropbox   OAuth 2 code flow with PKCE (a public client: no client_secret), access tokens that expire and a
          long-lived refresh token; the RPC endpoints get_metadata, list_folder[/continue] (cursor paging),
          create_folder_v2, delete_v2, copy_v2, move_v2 and the content endpoints upload, download (Range) and the
          upload sessions (upload_session/start, append_v2 at the cursor's offset, finish with a commit; an
          offset that is not the session's length is answered incorrect_offset with the correct one; a
          content_hash, of the bytes of that one request, is checked (content_hash_mismatch); with
          --drop-session-answers N the first N appends keep their piece but answer 503, as a lost answer; with
          --drop-finish-answers N the first N finishes make the file but answer 503).
          Errors: 409 with error_summary and .tag unions; 400 plain text for malformed calls.
onedrive  Microsoft identity platform v2.0: code flow with PKCE and device code, a public client, refresh tokens
          rotated by every token answer (with --single-use-refresh a used one is refused, so a client must
          keep the newest). Graph driveItems addressed by path under /v1.0/me/drive/root: get (with
          $select), children ($top and @odata.nextLink paging), content (302 to a pre-authenticated download
          address), simple upload, upload sessions (in-order fragments, multiples of 320 KiB; GET on the
          upload address gives nextExpectedRanges; --drop-session-answers and --drop-finish-answers lose the
          answers to fragments and to the last fragment as for Dropbox), create folder,
          delete, PATCH move/rename, copy with a monitor URL, versions.
pcloud    OAuth 2 code flow with a client secret; tokens do not expire. The path-based methods stat, listfolder,
          createfolderifnotexists, uploadfile (PUT), getfilelink with its download host, deletefile, deletefolder,
          renamefile, renamefolder, copyfile, copyfolder; errors are HTTP 200 with a result code.

What it does NOT prove: it follows the documented request and response shapes (and those OpenDAL 0.59 relies
on); it is not the provider. No quotas, no size limits but the ones named, no eventual consistency (a write is
visible at once), no case-insensitive names (Dropbox and OneDrive have them), no revisions, sharing or trash,
no throttling but --rate-limit, which answers every Nth API request (OAuth excluded) 429 with Retry-After: 1.
Where a provider's behaviour is undocumented, the comment at that spot says what we chose.
"""
import argparse
import base64
import hashlib
import json
import mimetypes
import os
import re
import secrets
import shutil
import sys
import threading
import time
import urllib.parse
from email.utils import formatdate

import https_fake

MiB = 1 << 20
DRIVE_ID = "fake-drive"
FRAGMENT = 320 * 1024  # Graph upload fragments but the last are multiples of this
SELECTABLE = {"id", "name", "size", "eTag", "createdDateTime", "lastModifiedDateTime", "parentReference", "folder",
              "file", "root"}


def log(msg):
    print(f"clouds: {msg}", file=sys.stderr, flush=True)



def dropbox_hash(data):
    """Dropbox's content_hash of `data`: SHA-256 over the SHA-256 of each 4 MiB block."""
    blocks = b"".join(hashlib.sha256(data[at:at + 4 * MiB]).digest() for at in range(0, len(data), 4 * MiB))
    return hashlib.sha256(blocks).hexdigest()

class Answer(Exception):
    """An HTTP answer, raised to stop handling early; `log` is a reason to show on stderr."""

    def __init__(self, status, body=b"", headers=None, log=None):
        super().__init__(status)
        self.status, self.body, self.headers, self.log = status, body, dict(headers or {}), log


def js(status, obj, headers=None, log=None):
    return Answer(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}, log)


def text(status, msg):
    return Answer(status, msg.encode(), {"Content-Type": "text/plain; charset=utf-8"}, msg)


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def rfc2822(ts):
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(ts))


def byte_range(header, size):
    """(first, last) for a Range header, None for the whole file; ValueError when unsatisfiable."""
    if not header:
        return None
    if not header.startswith("bytes=") or "," in header:
        raise ValueError(header)
    a, _, b = header[6:].strip().partition("-")
    first, last = (max(0, size - int(b)), size - 1) if a == "" else (int(a), min(int(b) if b else size - 1, size - 1))
    if size == 0 and first == 0:
        return None  # an empty file read from 0 is served whole (whether the real CDNs say 416 is unknown)
    if first >= size or first > last:
        raise ValueError(header)
    return first, last


class Req:
    def __init__(self, method, target, headers, body):
        self.method, self.headers, self.body = method, headers, body
        self.path, _, self.raw_query = target.partition("?")
        self.query = dict(urllib.parse.parse_qsl(self.raw_query, keep_blank_values=True))

    def form(self):
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            return None
        return dict(urllib.parse.parse_qsl(self.body.decode(errors="replace"), keep_blank_values=True))

    def bearer(self):
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else None


class Cloud:
    OAUTH = {"dropbox": {"/oauth2/authorize": "authorize", "/oauth2/token": "dbx_token"},
             "onedrive": {"/common/oauth2/v2.0/authorize": "authorize", "/common/oauth2/v2.0/token": "ms_token",
                          "/common/oauth2/v2.0/devicecode": "ms_devicecode", "/devicelogin": "ms_devicelogin"},
             "pcloud": {"/oauth2/authorize": "authorize", "/oauth2_token": "pc_token"}}

    def __init__(self, provider, dir_, root, ttl, rate_limit, max_upload):
        self.provider, self.dir, self.root = provider, dir_, os.path.realpath(root)
        self.ttl, self.rate_limit, self.max_upload = ttl, rate_limit, max_upload
        self.client_id = f"fake-{provider}-client"
        self.client_secret = secrets.token_urlsafe(24) if provider == "pcloud" else None
        self.port, self.lock, self.flight_lock, self.in_flight = 0, threading.RLock(), threading.Lock(), 0
        self.stats = dict.fromkeys(["requests", "api_requests", "rate_limited", "refreshes", "code_exchanges",
                                    "device_polls", "upload_sessions", "upload_fragments", "unauthorized",
                                    "bad_requests", "max_in_flight", "password_in_url",
                                    "client_secret_refused", "uploads_keeping_partial",
                                    "session_answers_dropped", "finish_answers_dropped",
                                    "largest_fragment", "content_hashes_checked", "uploads",
                                    "uploads_failed_on_demand", "uploads_without_length",
                                    "content_hash_mismatches", "session_bytes_received"], 0)
        # The first secrets handed out, for tests that check they are kept out of files.
        self.stats.update(refresh_tokens=[], access_tokens=[])
        self.single_use_refresh = False
        self.access, self.refresh = {}, set()  # access token -> expiry (None: never); valid refresh tokens
        self.codes, self.devices = {}, {}  # authorization codes; device codes
        self.ids, self.paths, self.next_id = {"/": 0}, {0: "/"}, 1  # stable item ids by path, and back
        self.cmod, self.digests = {}, {}  # Dropbox client_modified by path; (path, kind) -> (mtime, size, hash)
        self.links, self.sessions, self.monitors, self.cursors = {}, {}, {}, {}
        self.dbx_sessions, self.drop_session_answers = {}, 0  # Dropbox upload sessions; answers to lose
        self.drop_finish_answers = 0
        self.fail_uploads = 0  # pCloud: uploads to refuse with result 5000 once their body has arrived

    # ---- bookkeeping ----------------------------------------------------------------------------------------

    def enter(self):
        with self.flight_lock:
            self.in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.in_flight)

    def leave(self):
        with self.flight_lock:
            self.in_flight -= 1

    def write_stats(self):
        https_fake.write_json(self.dir, "stats.json", self.stats)

    def base(self):
        return f"https://127.0.0.1:{self.port}"

    def handle(self, req):
        with self.lock:
            self.stats["requests"] += 1
            try:
                ans = self.route(req)
            except Answer as a:
                ans = a
            self.stats["unauthorized"] += ans.status == 401
            if ans.log:
                self.stats["bad_requests"] += ans.status >= 400
                q = re.sub(r"((?:secret|token|password|code)=)[^&]*", r"\1...", req.raw_query)
                log(f"{req.method} {req.path}{'?' + q if q else ''} -> {ans.status}: {ans.log}")
            self.write_stats()
            return ans

    def route(self, req):
        oauth = self.OAUTH[self.provider].get(req.path)
        if oauth:
            return getattr(self, oauth)(req)
        self.stats["api_requests"] += 1
        if self.rate_limit and self.stats["api_requests"] % self.rate_limit == 0:
            self.stats["rate_limited"] += 1
            h = {"Retry-After": "1"}
            if self.provider == "dropbox":
                return js(429, {"error_summary": "too_many_requests/..",
                                "error": {"reason": {".tag": "too_many_requests"}, "retry_after": 1}}, h)
            if self.provider == "onedrive":
                return js(429, {"error": {"code": "activityLimitReached", "message": "The request was throttled"}}, h)
            # pCloud documents no HTTP 429 at all: this only proves the client's generic back-off.
            return js(429, {"result": 4000, "error": "Too many requests"}, h)
        return getattr(self, {"dropbox": "dbx_api", "onedrive": "graph_api", "pcloud": "pc_api"}[self.provider])(req)

    # ---- the tree under ROOT; remote paths are "/a/b", the root is "/" ---------------------------------------

    def norm(self, p):
        if not isinstance(p, str) or "\0" in p:
            raise ValueError("the path is not a string without NUL")
        parts = [s for s in p.split("/") if s]
        if any(s in (".", "..") for s in parts):
            raise ValueError(f"path {p!r} has a . or .. segment")
        return "/" + "/".join(parts)

    def local(self, p):
        return os.path.join(self.root, *p.split("/")[1:]) if p != "/" else self.root

    def kind(self, p):
        loc = self.local(p)
        if os.path.islink(loc):
            return None
        return "folder" if os.path.isdir(loc) else "file" if os.path.isfile(loc) else None

    def parent(self, p):
        return p.rsplit("/", 1)[0] or "/"

    def name(self, p):
        return p.rsplit("/", 1)[1]

    def join(self, p, name):
        return p.rstrip("/") + "/" + name

    def ancestors(self, p):
        while p != "/":
            p = self.parent(p)
            yield p

    def blocked(self, p):
        """A file stands where a parent folder of `p` should be."""
        return any(self.kind(a) == "file" for a in self.ancestors(p))

    def children(self, p):
        return [c for c in (self.join(p, n) for n in sorted(os.listdir(self.local(p)))) if self.kind(c)]

    def walk(self, p):
        for c in self.children(p):
            yield c
            if self.kind(c) == "folder":
                yield from self.walk(c)

    def id_of(self, p):
        if p not in self.ids:
            self.ids[p], self.paths[self.next_id] = self.next_id, p
            self.next_id += 1
        return self.ids[p]

    def rekey(self, old, new):
        """Items below `old` keep their ids and client_modified at `new` (None: they are gone)."""
        for table in (self.ids, self.cmod):
            for k in [k for k in table if k == old or k.startswith(old + "/")]:
                v = table.pop(k)
                if new is not None:
                    table[new + k[len(old):]] = v
        self.paths = {v: k for k, v in self.ids.items()}

    def mkdirs(self, p):
        os.makedirs(self.local(p), exist_ok=True)

    def write(self, p, data):
        self.mkdirs(self.parent(p))
        tmp = self.local(p) + f".clouds-{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.local(p))
        self.cmod.pop(p, None)

    def remove(self, p):
        (shutil.rmtree if self.kind(p) == "folder" else os.unlink)(self.local(p))
        self.rekey(p, None)

    def move(self, src, dst):
        self.mkdirs(self.parent(dst))
        os.rename(self.local(src), self.local(dst))
        self.rekey(src, dst)

    def copy(self, src, dst):
        self.mkdirs(self.parent(dst))
        if self.kind(src) == "folder":
            shutil.copytree(self.local(src), self.local(dst), copy_function=shutil.copyfile, dirs_exist_ok=True)
        else:
            shutil.copyfile(self.local(src), self.local(dst))

    def stat(self, p):
        return os.stat(self.local(p))

    def read(self, p, rng=None):
        with open(self.local(p), "rb") as f:
            f.seek(rng[0] if rng else 0)
            return f.read(rng[1] - rng[0] + 1 if rng else -1)

    def digest(self, p, kind):
        st = self.stat(p)
        hit = self.digests.get((p, kind))
        if hit and hit[:2] == (st.st_mtime_ns, st.st_size):
            return hit[2]
        with open(self.local(p), "rb") as f:
            if kind == "dropbox":  # Dropbox content_hash: sha256 over the sha256 of each 4 MiB block
                blocks = b"".join(hashlib.sha256(b).digest() for b in iter(lambda: f.read(4 * MiB), b""))
                value = hashlib.sha256(blocks).hexdigest()
            else:
                value = hashlib.new(kind, f.read()).hexdigest()
        self.digests[(p, kind)] = (st.st_mtime_ns, st.st_size, value)
        return value

    def serve(self, p, range_header, headers):
        st = self.stat(p)
        try:
            rng = byte_range(range_header, st.st_size)
        except ValueError:
            return Answer(416, b"", {"Content-Range": f"bytes */{st.st_size}"}, f"unsatisfiable {range_header!r}")
        h = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
             "Last-Modified": formatdate(st.st_mtime, usegmt=True), **headers}
        if rng:
            h["Content-Range"] = f"bytes {rng[0]}-{rng[1]}/{st.st_size}"
        return Answer(206 if rng else 200, self.read(p, rng), h)

    # ---- OAuth ----------------------------------------------------------------------------------------------

    def new_tokens(self, refresh):
        access = secrets.token_urlsafe(32)
        self.access[access] = None if self.provider == "pcloud" else time.time() + self.ttl
        rt = secrets.token_urlsafe(40) if refresh else None
        if rt:
            self.refresh.add(rt)
        for kind, token in (("access_tokens", access), ("refresh_tokens", rt)):
            if token and len(self.stats[kind]) < 4:
                self.stats[kind].append(token)
        return access, rt

    def token_state(self, token):
        """None when valid, else "missing", "invalid" or "expired"."""
        if not token:
            return "missing"
        if token not in self.access:
            return "invalid"
        return "expired" if (self.access[token] or float("inf")) < time.time() else None

    def authorize(self, req):
        """The consent page, approved at once: 302 back to the loopback redirect URI with a code."""
        q = req.query
        u = urllib.parse.urlsplit(q.get("redirect_uri", ""))
        if req.method != "GET" or q.get("client_id") != self.client_id:
            raise text(400, f"{req.method} with unknown client_id {q.get('client_id')!r}")
        if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost") or u.port is None:
            raise text(400, f"redirect_uri {q.get('redirect_uri')!r} is not a registered loopback address")
        if q.get("response_type") != "code":
            raise text(400, f"response_type must be code, not {q.get('response_type')!r}")
        if self.provider != "pcloud" and (q.get("code_challenge_method") != "S256"
                                          or not 43 <= len(q.get("code_challenge", "")) <= 128):
            raise text(400, "PKCE with code_challenge_method=S256 is required")
        if self.provider == "onedrive" and not self.ms_scope_ok(q.get("scope")):
            raise text(400, f"scope {q.get('scope')!r} lacks offline_access and Files.ReadWrite")
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"redirect_uri": q["redirect_uri"], "challenge": q.get("code_challenge"), "used": False,
                            "offline": self.provider != "dropbox" or q.get("token_access_type") == "offline"}
        back = {"code": code, **({"state": q["state"]} if "state" in q else {})}
        if self.provider == "pcloud":
            back.update(locationid="1", hostname=f"127.0.0.1:{self.port}")
        sep = "&" if u.query else "?"
        return Answer(302, b"", {"Location": q["redirect_uri"] + sep + urllib.parse.urlencode(back)})

    def redeem(self, f, err):
        """Checks an authorization-code grant with PKCE; `err(code, description)` builds the refusal."""
        grant = self.codes.get(f.get("code", ""))
        if not grant or grant["used"]:
            raise err("invalid_grant", "the code doesn't exist, has expired or was already used")
        grant["used"] = True
        verifier = f.get("code_verifier", "").encode()
        if base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode() != grant["challenge"]:
            raise err("invalid_grant", "invalid code verifier")
        if f.get("redirect_uri") != grant["redirect_uri"]:
            raise err("invalid_grant", "redirect_uri mismatch")
        self.stats["code_exchanges"] += 1
        return grant

    def dbx_token(self, req):
        f = req.form()

        def err(code, desc):
            return js(400, {"error": code, "error_description": desc}, log=f"{code}: {desc}")

        if req.method != "POST" or f is None:
            raise err("invalid_request", "POST an application/x-www-form-urlencoded body")
        if f.get("client_id") != self.client_id:
            raise err("invalid_client", "unknown client_id")
        if "client_secret" in f:
            # What Dropbox says to an (empty) secret from a PKCE app is undocumented: the client must omit it.
            raise err("invalid_client", "a PKCE (public) client sends no client_secret")
        if f.get("grant_type") == "authorization_code":
            access, rt = self.new_tokens(self.redeem(f, err)["offline"])
            return js(200, {"access_token": access, "token_type": "bearer", "expires_in": self.ttl, "uid": "1",
                            "account_id": "dbid:fake", **({"refresh_token": rt} if rt else {}),
                            "scope": "files.content.read files.content.write files.metadata.read"})
        if f.get("grant_type") == "refresh_token":
            if f.get("refresh_token") not in self.refresh:
                raise err("invalid_grant", "refresh token is invalid or revoked")
            self.stats["refreshes"] += 1
            access, _ = self.new_tokens(False)  # Dropbox refresh tokens live on: no new one
            return js(200, {"access_token": access, "token_type": "bearer", "expires_in": self.ttl})
        raise err("unsupported_grant_type", f"grant_type {f.get('grant_type')!r}")

    def ms_err(self, status, code, desc, aadsts=70000):
        return js(status, {"error": code, "error_description": f"AADSTS{aadsts}: {desc}", "error_codes": [aadsts],
                           "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                           "trace_id": secrets.token_hex(8), "correlation_id": secrets.token_hex(8)},
                  log=None if code == "authorization_pending" else f"{code}: {desc}")

    def ms_scope_ok(self, scope):
        return {"offline_access", "files.readwrite"} <= {s.rsplit("/", 1)[-1].lower() for s in (scope or "").split()}

    def ms_form(self, req):
        f = req.form()
        if req.method != "POST" or f is None:
            raise self.ms_err(400, "invalid_request", "POST an application/x-www-form-urlencoded body", 900144)
        if f.get("client_id") != self.client_id:
            raise self.ms_err(400, "unauthorized_client", f"Application with identifier '{f.get('client_id')}' "
                                                          "was not found in the directory.", 700016)
        if "client_secret" in f or "client_assertion" in f:  # also when empty
            self.stats["client_secret_refused"] += 1
            raise self.ms_err(401, "invalid_client", "Client is public so neither 'client_assertion' nor "
                                                     "'client_secret' should be presented.", 700025)
        return f

    def ms_token(self, req):
        f = self.ms_form(req)
        grant = f.get("grant_type")
        if grant == "authorization_code":
            self.redeem(f, lambda code, desc: self.ms_err(400, code, desc))
        elif grant == "refresh_token":
            if f.get("refresh_token") not in self.refresh:
                raise self.ms_err(400, "invalid_grant", "The provided value for 'refresh_token' is not valid.")
            self.stats["refreshes"] += 1
            if self.single_use_refresh:
                # Strict rotation (--single-use-refresh): the client must keep the new token it is given.
                self.refresh.discard(f["refresh_token"])
        elif grant == "urn:ietf:params:oauth:grant-type:device_code":
            self.stats["device_polls"] += 1
            dev = self.devices.get(f.get("device_code", ""))
            if not dev:
                raise self.ms_err(400, "invalid_grant", "The provided value for 'device_code' is not valid.")
            if time.time() > dev["expires"]:
                raise self.ms_err(400, "expired_token", "The device code has expired.", 70020)
            if not dev["approved"]:
                raise self.ms_err(400, "authorization_pending", "The user has not yet authenticated.", 70016)
            del self.devices[f["device_code"]]
            self.stats["code_exchanges"] += 1
        else:
            raise self.ms_err(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported", 70003)
        access, rt = self.new_tokens(True)  # every answer rotates the refresh token; the old one stays valid
        return js(200, {"token_type": "Bearer", "scope": "Files.ReadWrite offline_access", "expires_in": self.ttl,
                        "ext_expires_in": self.ttl, "access_token": access, "refresh_token": rt})

    def ms_devicecode(self, req):
        f = self.ms_form(req)
        if not self.ms_scope_ok(f.get("scope")):
            raise self.ms_err(400, "invalid_scope", "offline_access and Files.ReadWrite are needed", 70011)
        device, user = secrets.token_urlsafe(32), "-".join(secrets.token_hex(2).upper() for _ in range(2))
        self.devices[device] = {"user_code": user, "approved": False, "expires": time.time() + 900}
        uri = f"{self.base()}/devicelogin"
        return js(200, {"device_code": device, "user_code": user, "verification_uri": uri, "expires_in": 900,
                        "interval": 1, "message": f"To sign in, use a web browser to open the page {uri} and enter "
                                                  f"the code {user} to authenticate."})

    def ms_devicelogin(self, req):
        """The user's side of the device code flow: GET /devicelogin?otc=USER_CODE approves the sign-in."""
        dev = [d for d in self.devices.values() if d["user_code"] == req.query.get("otc")]
        if req.method != "GET" or not dev:
            raise text(400, f"no pending sign-in has the code {req.query.get('otc')!r}")
        dev[0]["approved"] = True
        return Answer(200, b"<html><body>You have signed in. You can close this window.</body></html>",
                      {"Content-Type": "text/html; charset=utf-8"})

    def pc_token(self, req):
        p = {**req.query, **(req.form() or {})}
        grant = self.codes.get(p.get("code", ""))
        if (req.method not in ("GET", "POST") or p.get("client_id") != self.client_id
                or p.get("client_secret") != self.client_secret or not grant or grant["used"]):
            return js(200, {"result": 2012, "error": "Invalid 'code' provided."}, log="oauth2_token refused")
        grant["used"] = True
        self.stats["code_exchanges"] += 1
        access, _ = self.new_tokens(False)
        return js(200, {"result": 0, "access_token": access, "token_type": "bearer", "uid": 1, "locationid": 1})

    # ---- Dropbox API v2 -------------------------------------------------------------------------------------

    DBX_ARGS = {  # endpoint: (required, optional) fields; Dropbox refuses unknown ones
        "get_metadata": ({"path"}, {"include_media_info", "include_deleted", "include_has_explicit_shared_members",
                                    "include_property_groups"}),
        "list_folder": ({"path"}, {"recursive", "include_media_info", "include_deleted", "limit", "shared_link",
                                   "include_has_explicit_shared_members", "include_mounted_folders",
                                   "include_property_groups", "include_non_downloadable_files"}),
        "list_folder/continue": ({"cursor"}, set()),
        "create_folder_v2": ({"path"}, {"autorename"}),
        "delete_v2": ({"path"}, {"parent_rev"}),
        "copy_v2": ({"from_path", "to_path"}, {"allow_shared_folder", "autorename", "allow_ownership_transfer"}),
        "move_v2": ({"from_path", "to_path"}, {"allow_shared_folder", "autorename", "allow_ownership_transfer"}),
        "download": ({"path"}, {"rev"}),
        "upload": ({"path"}, {"mode", "autorename", "client_modified", "mute", "property_groups", "strict_conflict",
                              "content_hash"}),
        "upload_session/start": (set(), {"close", "session_type", "content_hash"}),
        "upload_session/append_v2": ({"cursor"}, {"close", "content_hash"}),
        "upload_session/finish": ({"cursor", "commit"}, {"content_hash"}),
    }
    DBX_COMMIT = ({"path"}, {"mode", "autorename", "client_modified", "mute", "property_groups", "strict_conflict"})
    DBX_TYPES = {  # the Content-Type each kind of endpoint accepts
        "rpc": {"application/json", "application/json; charset=utf-8", "text/plain; charset=dropbox-cors-hack"},
        "upload": {"application/octet-stream", "text/plain; charset=dropbox-cors-hack"},
        "download": {"", "text/plain", "text/plain; charset=utf-8", "application/octet-stream",
                     "application/octet-stream; charset=utf-8"},
    }

    def dbx_conflict(self, summary):
        """409 with "path/not_found" as error_summary "path/not_found/.." and the nested .tag union."""
        tags = summary.split("/")
        err = {".tag": tags[-1]}
        for t in reversed(tags[:-1]):
            err = {".tag": t, t: err}
        return js(409, {"error_summary": summary + "/..", "error": err})

    def dbx_meta(self, p):
        m = {".tag": self.kind(p), "name": self.name(p), "path_lower": p.lower(), "path_display": p,
             "id": f"id:fake{self.id_of(p):018d}"}
        if m[".tag"] == "file":
            st = self.stat(p)
            m.update(client_modified=self.cmod.get(p, iso(st.st_mtime)), server_modified=iso(st.st_mtime),
                     rev=f"{st.st_mtime_ns:015x}", size=st.st_size, is_downloadable=True,
                     content_hash=self.digest(p, "dropbox"))
        return m

    ACCOUNT_EMAIL = "alice@example.com"

    def dbx_api(self, req):
        if req.path == "/2/users/get_current_account":  # no arguments: a body of `null`, or none
            if req.method != "POST" or self.token_state(req.bearer()):
                return js(401, {"error_summary": "invalid_access_token/..", "error": {".tag": "invalid_access_token"}})
            if req.body not in (b"", b"null"):
                raise text(400, 'Error in call to API function "users/get_current_account": request body: '
                                "could not decode input as JSON")
            return js(200, {"account_id": "dbid:fake", "email": self.ACCOUNT_EMAIL, "email_verified": True,
                            "name": {"display_name": "Alice", "given_name": "Alice", "surname": "",
                                     "familiar_name": "Alice", "abbreviated_name": "A"},
                            "disabled": False, "country": "DE", "locale": "en", "is_paired": False,
                            "account_type": {".tag": "basic"}, "root_info": {".tag": "user"}})
        fn = req.path[len("/2/files/"):] if req.path.startswith("/2/files/") else None
        if fn not in self.DBX_ARGS:
            raise text(404, f"unknown endpoint {req.path}")
        bad = lambda msg: text(400, f'Error in call to API function "files/{fn}": {msg}')  # noqa: E731
        if req.method != "POST":
            raise bad(f"use POST, not {req.method}")
        state = self.token_state(req.bearer())
        if state == "missing":
            raise bad('Must provide HTTP header "Authorization" or URL parameter "authorization".')
        if state:
            return js(401, {"error_summary": f"{state}_access_token/..", "error": {".tag": f"{state}_access_token"}})
        kind = "upload" if fn == "upload" or fn.startswith("upload_session/") else fn if fn == "download" else "rpc"
        ctype = req.headers.get("Content-Type", "")
        if ctype not in self.DBX_TYPES[kind]:
            raise bad(f'Bad HTTP "Content-Type" header: "{ctype}". Expecting one of '
                      + ", ".join(f'"{t}"' for t in sorted(self.DBX_TYPES[kind]) if t))
        raw = req.headers.get("Dropbox-API-Arg", "") if kind != "rpc" else req.body.decode(errors="replace")
        if kind != "rpc" and not raw.isascii():
            # Dropbox documents that header arguments are ASCII, other characters escaped as \uXXXX.
            raise bad("Dropbox-API-Arg must be ASCII: escape other characters in its JSON as \\uXXXX")
        try:
            args = json.loads(raw)
            assert isinstance(args, dict)
        except (ValueError, AssertionError):
            raise bad(f"could not decode input as JSON: {raw!r}")
        required, optional = self.DBX_ARGS[fn]
        for key in sorted(set(args) - required - optional):
            raise bad(f"request body: unknown field '{key}'")
        for key in sorted(required - set(args)):
            raise bad(f"request body: missing required field '{key}'")
        if args.get("autorename"):
            raise bad("autorename is not implemented by this fake")
        paths = {}
        for key in ("path", "from_path", "to_path"):
            v = args.get(key)
            if key not in args or (v == "" and fn == "list_folder"):  # "" is the root, for list_folder only
                paths[key] = "/"
                continue
            if v == "" and fn == "get_metadata":
                raise bad("request body: path: The root folder is unsupported.")
            if v == "/":
                raise bad(f'request body: {key}: Specify the root folder as an empty string rather than as "/".')
            if not isinstance(v, str) or not v.startswith("/"):
                raise bad(f"request body: {key}: {v!r} did not match pattern '(/(.|[\\r\\n])*)|(ns:[0-9]+(/.*)?)'")
            if v.endswith("/") or "//" in v:
                return self.dbx_conflict(f"{key.replace('_path', '')}/malformed_path")
            try:
                paths[key] = self.norm(v)
            except ValueError as e:
                raise bad(str(e))
        return getattr(self, "dbx_" + fn.replace("/", "_"))(req, args, paths["path"], paths, bad)

    def dbx_get_metadata(self, req, args, p, paths, bad):
        return js(200, self.dbx_meta(p)) if self.kind(p) else self.dbx_conflict("path/not_found")

    def dbx_list_folder(self, req, args, p, paths, bad):
        limit = args.get("limit", 2000)
        if not isinstance(limit, int) or not 1 <= limit <= 2000:
            raise bad(f"request body: limit: {limit!r} is not between 1 and 2000")
        if self.kind(p) != "folder":
            return self.dbx_conflict("path/not_folder" if self.kind(p) else "path/not_found")
        if args.get("recursive"):  # a recursive listing includes the folder itself (not the root)
            entries = [self.dbx_meta(c) for c in ([p] if p != "/" else []) + list(self.walk(p))]
        else:
            entries = [self.dbx_meta(c) for c in self.children(p)]
        return self.dbx_page(entries, 0, limit)

    def dbx_page(self, entries, pos, limit):
        cursor, end = "AAH" + secrets.token_urlsafe(30), min(pos + limit, len(entries))
        self.cursors[cursor] = (entries, end, limit)  # a snapshot: later changes are not reported
        return js(200, {"entries": entries[pos:end], "cursor": cursor, "has_more": end < len(entries)})

    def dbx_list_folder_continue(self, req, args, p, paths, bad):
        if args["cursor"] not in self.cursors:
            raise bad(f"request body: cursor: invalid cursor {args['cursor'][:20]!r}")
        return self.dbx_page(*self.cursors[args["cursor"]])

    def dbx_create_folder_v2(self, req, args, p, paths, bad):
        if self.kind(p) or self.blocked(p):  # missing parents are created
            return self.dbx_conflict(f"path/conflict/{self.kind(p) or 'file'}")
        self.mkdirs(p)
        return js(200, {"metadata": self.dbx_meta(p)})

    def dbx_delete_v2(self, req, args, p, paths, bad):
        if not self.kind(p):
            return self.dbx_conflict("path_lookup/not_found")
        meta = self.dbx_meta(p)
        self.remove(p)  # folders with everything in them
        return js(200, {"metadata": meta})

    def dbx_copy_v2(self, req, args, p, paths, bad, copy=True):
        src, dst = paths["from_path"], paths["to_path"]
        if not self.kind(src):
            return self.dbx_conflict("from_lookup/not_found")
        if src == dst or dst.startswith(src + "/"):
            return self.dbx_conflict("duplicated_or_nested_paths")
        if self.kind(dst) or self.blocked(dst):  # Dropbox never replaces on copy or move
            return self.dbx_conflict(f"to/conflict/{self.kind(dst) or 'file'}")
        (self.copy if copy else self.move)(src, dst)
        return js(200, {"metadata": self.dbx_meta(dst)})  # a RelocationResult: the metadata is wrapped

    def dbx_move_v2(self, req, args, p, paths, bad):
        return self.dbx_copy_v2(req, args, p, paths, bad, copy=False)

    def dbx_download(self, req, args, p, paths, bad):
        if self.kind(p) != "file":
            return self.dbx_conflict("path/not_file" if self.kind(p) else "path/not_found")
        return self.serve(p, req.headers.get("Range"), {"Dropbox-API-Result": json.dumps(self.dbx_meta(p))})

    def dbx_upload(self, req, args, p, paths, bad):
        if len(req.body) > self.max_upload:
            raise bad(f"the body has {len(req.body)} bytes, more than {self.max_upload}: larger files are sent with "
                      "upload sessions (files/upload_session/start)")
        mode = args.get("mode", "add")
        tag, rev = (mode.get(".tag"), mode.get("update")) if isinstance(mode, dict) else (mode, None)
        if tag not in ("add", "overwrite", "update"):
            raise bad(f"request body: mode: unknown tag {tag!r}")
        if self.kind(p) == "folder" or self.blocked(p):
            return self.dbx_conflict(f"path/conflict/{self.kind(p) or 'file'}")
        if self.kind(p) == "file" and tag != "overwrite":
            if self.read(p) == req.body:  # the same content again is no conflict
                return js(200, self.dbx_meta(p))
            if tag == "add" or self.dbx_meta(p)["rev"] != rev:
                return self.dbx_conflict("path/conflict/file")
        self.write(p, req.body)  # missing parents are created
        if "client_modified" in args:
            self.cmod[p] = args["client_modified"]
        return js(200, self.dbx_meta(p))  # the FileMetadata itself, not wrapped

    # Upload sessions: start with the first piece, append_v2 each next one at its offset, finish with the commit.
    # Each request takes at most --max-upload bytes (150 MiB at Dropbox); the file appears only at finish.
    def dbx_piece(self, req, args, bad):
        """Checks one request's piece: its size, and the content_hash it names, which is of the bytes of this
        request only (Dropbox answers content_hash_mismatch otherwise, keeping nothing of it)."""
        if len(req.body) > self.max_upload:
            raise bad(f"the body has {len(req.body)} bytes, more than {self.max_upload}")
        if "content_hash" in args:
            h = args["content_hash"]
            if not isinstance(h, str) or len(h) != 64:
                raise bad(f"request body: content_hash: {h!r} is not 64 characters")
            self.stats["content_hashes_checked"] += 1
            if h != dropbox_hash(req.body):
                self.stats["content_hash_mismatches"] += 1
                return self.dbx_conflict("content_hash_mismatch")
        self.stats["upload_fragments"] += 1
        self.stats["session_bytes_received"] += len(req.body)
        return None

    def dbx_cursor(self, args, bad, nested):
        """The session a cursor names at its offset, or the 409 Dropbox answers (lookup errors are nested under
        lookup_failed in finish's error union, at the top of append_v2's)."""
        cur = args["cursor"]
        if not isinstance(cur, dict) or set(cur) != {"session_id", "offset"} or not isinstance(cur["offset"], int):
            raise bad(f"request body: cursor: {cur!r} is not an UploadSessionCursor")
        prefix = "lookup_failed/" if nested else ""
        sess = self.dbx_sessions.get(cur["session_id"])
        if sess is None:
            return None, self.dbx_conflict(prefix + "not_found")
        if cur["offset"] != len(sess["data"]):
            err = {".tag": "incorrect_offset", "correct_offset": len(sess["data"])}
            if nested:
                err = {".tag": "lookup_failed", "lookup_failed": err}
            return None, js(409, {"error_summary": prefix + "incorrect_offset/..", "error": err})
        if sess["closed"] and not nested:
            return None, self.dbx_conflict("closed")
        return sess, None

    def dbx_upload_session_start(self, req, args, p, paths, bad):
        refused = self.dbx_piece(req, args, bad)
        if refused:
            return refused
        sid = "pid_upload_session:" + secrets.token_urlsafe(24)
        self.dbx_sessions[sid] = {"data": bytearray(req.body), "closed": bool(args.get("close"))}
        self.stats["upload_sessions"] += 1
        return js(200, {"session_id": sid})

    def dbx_upload_session_append_v2(self, req, args, p, paths, bad):
        sess, refused = self.dbx_cursor(args, bad, nested=False)
        refused = refused or self.dbx_piece(req, args, bad)
        if refused:
            return refused
        sess["data"] += req.body
        sess["closed"] = bool(args.get("close"))
        if self.drop_session_answers > 0:
            # The piece is kept, but its answer is lost on the way: the client sends it again.
            self.drop_session_answers -= 1
            self.stats["session_answers_dropped"] += 1
            return text(503, "the answer to this append was lost (on purpose)")
        return js(200, None)

    def dbx_upload_session_finish(self, req, args, p, paths, bad):
        commit = args["commit"]
        if not isinstance(commit, dict):
            raise bad("request body: commit: not a CommitInfo")
        required, optional = self.DBX_COMMIT
        for key in sorted(set(commit) - required - optional):
            raise bad(f"request body: commit: unknown field '{key}'")
        v = commit.get("path")
        if not isinstance(v, str) or not v.startswith("/") or v.endswith("/") or "//" in v:
            return self.dbx_conflict("path/malformed_path")
        try:
            p = self.norm(v)
        except ValueError as e:
            raise bad(str(e))
        sess, refused = self.dbx_cursor(args, bad, nested=True)
        refused = refused or self.dbx_piece(req, args, bad)
        if refused:
            return refused
        data = bytes(sess["data"]) + req.body
        mode = commit.get("mode", "add")
        tag = mode.get(".tag") if isinstance(mode, dict) else mode
        if self.kind(p) == "folder" or self.blocked(p):
            return self.dbx_conflict(f"path/conflict/{self.kind(p) or 'file'}")
        if self.kind(p) == "file" and tag != "overwrite" and self.read(p) != data:
            return self.dbx_conflict("path/conflict/file")
        del self.dbx_sessions[args["cursor"]["session_id"]]
        self.write(p, data)
        if "client_modified" in commit:
            self.cmod[p] = commit["client_modified"]
        if self.drop_finish_answers > 0:
            # The file is made and the session gone, but the answer is lost: a retry finds no session.
            self.drop_finish_answers -= 1
            self.stats["finish_answers_dropped"] += 1
            return text(503, "the answer to this finish was lost (on purpose)")
        return js(200, self.dbx_meta(p))

    # ---- Microsoft Graph --------------------------------------------------------------------------------------

    def gerr(self, status, code, message, log=None, headers=None):
        return js(status, {"error": {"code": code, "message": message, "innerError": {
            "date": iso(time.time()), "request-id": secrets.token_hex(8)}}}, headers, log)

    def graph_id(self, p):
        return f"FAKEDRIVE!{self.id_of(p)}"

    def graph_item(self, p):
        st, folder = self.stat(p), self.kind(p) == "folder"
        size = sum(self.stat(c).st_size for c in self.walk(p) if self.kind(c) == "file") if folder else st.st_size
        it = {"id": self.graph_id(p), "name": self.name(p) if p != "/" else "root", "size": size,
              "eTag": f'"{{{self.graph_id(p)}}},{st.st_mtime_ns}"', "createdDateTime": iso(st.st_mtime),
              "lastModifiedDateTime": iso(st.st_mtime)}
        if p == "/":  # the root has no parent: its parentReference (if any) names the drive only
            it.update(root={}, parentReference={"driveId": DRIVE_ID, "driveType": "personal"})
        else:  # itemReference.path is documented as percent-encoded
            up = self.parent(p)
            it["parentReference"] = {"driveId": DRIVE_ID, "driveType": "personal", "id": self.graph_id(up),
                                     "path": "/drive/root:" + (urllib.parse.quote(up) if up != "/" else "")}
        if folder:
            it["folder"] = {"childCount": len(self.children(p))}
        else:
            it["file"] = {"mimeType": mimetypes.guess_type(p)[0] or "application/octet-stream"}
        return it

    def selected(self, it, q):
        fields = [f.strip() for f in q.get("$select", ",".join(it)).split(",") if f.strip()]
        for f in fields:
            if f not in SELECTABLE:
                raise self.gerr(400, "BadRequest", f"Could not find a property named '{f}' on type "
                                                   "'microsoft.graph.driveItem'.", log=f"$select of {f!r}")
        return {k: v for k, v in it.items() if k in fields}

    def graph_target(self, path):
        """(remote path, action) for /v1.0/me/drive/root[/children] or .../root:/a/b[:[/action]], else None."""
        base = "/v1.0/me/drive/root"
        if path in (base, base + "/children"):
            return "/", path[len(base) + 1:]
        if not path.startswith(base + ":"):
            return None
        item, colon, action = path[len(base) + 1:].partition(":")  # ':' in a name arrives percent-encoded
        item = urllib.parse.unquote(item)
        if (colon and action and not action.startswith("/")) or not item.startswith("/") or item == "/" \
                or item.endswith("/") or "//" in item:
            raise self.gerr(400, "invalidRequest", f"Invalid path {item!r} or segment {action!r}", log="addressing")
        try:
            return self.norm(item), action[1:]
        except ValueError as e:
            raise self.gerr(400, "invalidRequest", str(e), log=str(e))

    def graph_api(self, req):
        if req.path.startswith("/_dl/"):  # pre-authenticated download addresses
            p = self.links.get(req.path[5:])
            if req.method != "GET" or not p or self.kind(p) != "file":
                raise self.gerr(404, "itemNotFound", "The download link is unknown or the file is gone", log="link")
            return self.serve(p, req.headers.get("Range"), {"ETag": self.graph_item(p)["eTag"]})
        if req.path.startswith("/_upload/"):  # upload session addresses, also pre-authenticated
            return self.graph_fragment(req, self.sessions.get(req.path[9:]), req.path[9:])
        if req.path == "/v1.0/me":
            if req.method != "GET" or self.token_state(req.bearer()):
                raise self.gerr(401, "InvalidAuthenticationToken", "Access token is empty or not valid.")
            return js(200, {"id": "fake-user", "displayName": "Alice", "userPrincipalName": self.ACCOUNT_EMAIL,
                            "mail": self.ACCOUNT_EMAIL})
        target = self.graph_target(req.path)
        if target is None and not req.path.startswith("/_monitor/"):
            raise self.gerr(400, "BadRequest", f"Resource not found for the segment in {req.path}", log="unknown path")
        state = self.token_state(req.bearer())
        if state:
            raise self.gerr(401, "InvalidAuthenticationToken", "Access token is empty." if state == "missing"
                            else "Access token has expired or is not yet valid.",
                            headers={"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'})
        if req.path.startswith("/_monitor/"):
            status = self.monitors.get(req.path[10:])
            if req.method != "GET" or not status:
                raise self.gerr(404, "itemNotFound", "unknown monitor", log="unknown monitor")
            return js(200, status)
        for key in req.query:
            if key not in ("$select", "$top", "$skiptoken", "@microsoft.graph.conflictBehavior"):
                raise self.gerr(400, "BadRequest", f"Query option '{key}' is not allowed.", log=f"query {key!r}")
        self.selected({}, req.query)  # OData options are checked before the path is resolved
        p, action = target
        creates = (req.method, action) in (("PUT", "content"), ("POST", "createUploadSession"))
        if not creates and not self.kind(p):  # the path is resolved first: POST root:/children is item "/children"
            raise self.gerr(404, "itemNotFound", "The resource could not be found.",
                            log=None if req.method in ("GET", "DELETE") else f"{req.method} {action} of missing {p}")
        handler = {("GET", ""): self.graph_get, ("DELETE", ""): self.graph_delete, ("PATCH", ""): self.graph_patch,
                   ("GET", "children"): self.graph_children, ("POST", "children"): self.graph_mkdir,
                   ("GET", "content"): self.graph_content, ("PUT", "content"): self.graph_put,
                   ("POST", "createUploadSession"): self.graph_session, ("POST", "copy"): self.graph_copy,
                   ("GET", "versions"): self.graph_versions}.get((req.method, action))
        if not handler:
            raise self.gerr(400, "BadRequest", f"{req.method} is not supported on '{action or 'an item'}'",
                            log="unsupported method or segment")
        return handler(req, p)

    def graph_body(self, req, allowed):
        try:
            body = json.loads(req.body or b"{}")
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            raise self.gerr(400, "BadRequest", "The request body is not a JSON object", log="body is not JSON")
        for key in set(body) - allowed:
            raise self.gerr(400, "BadRequest", f"Unknown property '{key}'", log=f"unexpected body field {key!r}")
        return body

    def behavior(self, req, body, default="fail"):
        b = body.get("@microsoft.graph.conflictBehavior") or req.query.get("@microsoft.graph.conflictBehavior")
        if b not in (None, "fail", "replace"):
            raise self.gerr(400, "invalidRequest", f"conflictBehavior {b!r} is not implemented here", log="behavior")
        return b or default

    def graph_get(self, req, p):
        if req.headers.get("If-None-Match") == self.graph_item(p)["eTag"]:
            return Answer(304)
        return js(200, self.selected(self.graph_item(p), req.query))

    def graph_children(self, req, p):
        try:
            top = int(req.query.get("$top", "200"))
            skip = int(base64.urlsafe_b64decode(req.query.get("$skiptoken", "MA==")).decode())
            assert 1 <= top <= 1000 and skip >= 0
        except (ValueError, AssertionError):
            raise self.gerr(400, "invalidRequest", "Invalid $top or $skiptoken", log="paging")
        kids = self.children(p) if self.kind(p) == "folder" else []
        out = {"value": [self.selected(self.graph_item(c), req.query) for c in kids[skip:skip + top]]}
        if skip + top < len(kids):
            q = {**req.query, "$skiptoken": base64.urlsafe_b64encode(str(skip + top).encode()).decode()}
            out["@odata.nextLink"] = f"{self.base()}{req.path}?{urllib.parse.urlencode(q, safe='$,')}"
        return js(200, out)

    def graph_content(self, req, p):
        if self.kind(p) != "file":
            raise self.gerr(404, "itemNotFound", "A folder has no content", log="content of a folder")
        if req.headers.get("If-None-Match") == self.graph_item(p)["eTag"]:
            return Answer(304)
        token = secrets.token_urlsafe(24)
        self.links[token] = p
        return Answer(302, b"", {"Location": f"{self.base()}/_dl/{token}"})

    def upload_target(self, req, p, behavior):
        """Refuses an upload to `p` as Graph would; whether it replaces a file."""
        if self.blocked(p) or self.kind(p) == "folder" or (self.kind(p) and behavior == "fail"):
            raise self.gerr(409, "nameAlreadyExists", "The specified item name already exists.")
        im = req.headers.get("If-Match")
        if im is not None and (not self.kind(p) or im not in ("*", self.graph_item(p)["eTag"])):
            raise self.gerr(412, "preconditionFailed", "The resource has changed since the caller last read it")
        return self.kind(p) == "file"

    def graph_put(self, req, p):  # missing parents are created
        if len(req.body) > 250 * MiB:
            raise self.gerr(413, "requestTooLarge", "Simple upload takes files up to 250 MB", log="too large")
        replaced = self.upload_target(req, p, self.behavior(req, {}, default="replace"))
        self.write(p, req.body)
        return js(200 if replaced else 201, self.selected(self.graph_item(p), req.query))

    def graph_session(self, req, p):
        body = self.graph_body(req, {"item", "deferCommit"})
        item = body.get("item", {})
        if (set(item) - {"@microsoft.graph.conflictBehavior", "name", "description", "fileSize", "@odata.type"}
                or item.get("name", self.name(p)) != self.name(p) or body.get("deferCommit")):
            raise self.gerr(400, "invalidRequest", f"Unsupported upload session body {body!r}", log="session body")
        self.upload_target(req, p, self.behavior(req, item))  # no default is documented here: "fail" is ours
        sid, expires = secrets.token_urlsafe(24), iso(time.time() + 86400)
        self.sessions[sid] = {"path": p, "data": bytearray(), "total": None, "expires": expires}
        self.stats["upload_sessions"] += 1
        return js(200, {"uploadUrl": f"{self.base()}/_upload/{sid}", "expirationDateTime": expires,
                        "nextExpectedRanges": ["0-"]})

    def graph_fragment(self, req, s, sid):
        if not s:
            raise self.gerr(404, "itemNotFound", "The upload session was not found", log="unknown upload session")
        if req.method == "DELETE":
            del self.sessions[sid]
            return Answer(204)
        if req.method == "GET":  # documented: the session's status, to resume an upload
            return js(200, {"expirationDateTime": s["expires"], "nextExpectedRanges": [f"{len(s['data'])}-"]})
        self.stats["upload_fragments"] += 1
        if req.method != "PUT":
            raise self.gerr(400, "BadRequest", f"{req.method} on an upload session", log="method")
        if "Authorization" in req.headers:  # documented: a token sent to the upload URL may get a 401
            raise self.gerr(401, "unauthenticated", "The upload URL takes no Authorization header",
                            log="Authorization sent to an upload URL")
        try:
            unit, _, spec = req.headers.get("Content-Range", "").partition(" ")
            first, last, total = (int(x) for x in spec.replace("/", "-").split("-"))
            assert unit == "bytes" and 0 <= first <= last < total
        except (ValueError, AssertionError):
            raise self.gerr(400, "invalidRequest", "Content-Range must be 'bytes a-b/total'", log="Content-Range")
        if first != len(s["data"]) or s["total"] not in (None, total):
            raise self.gerr(416, "invalidRange", f"The next expected range starts at {len(s['data'])}",
                            log=f"fragment {first}-{last}/{total} after {len(s['data'])} bytes")
        size = last - first + 1
        self.stats["largest_fragment"] = max(self.stats["largest_fragment"], len(req.body))
        if size != len(req.body) or size > 60 * MiB or (last + 1 < total and size % FRAGMENT):
            raise self.gerr(400, "invalidRequest", "A fragment must match Content-Range, be at most 60 MiB and, but "
                                                   "for the last, a multiple of 320 KiB", log=f"fragment of {size}")
        s["data"] += req.body
        s["total"] = total
        if last + 1 < total:
            if self.drop_session_answers > 0:
                # The fragment is kept, but its answer is lost on the way: the client sends it again.
                self.drop_session_answers -= 1
                self.stats["session_answers_dropped"] += 1
                return text(503, "the answer to this fragment was lost (on purpose)")
            return js(202, {"expirationDateTime": s["expires"], "nextExpectedRanges": [f"{last + 1}-"]})
        del self.sessions[sid]
        p = s["path"]
        if self.kind(p) == "folder" or self.blocked(p):
            raise self.gerr(409, "nameAlreadyExists", "A folder took the name meanwhile")
        replaced = self.kind(p) == "file"
        self.write(p, bytes(s["data"]))
        if self.drop_finish_answers > 0:
            # The file is made and the session gone, but the answer is lost: a retry finds no session.
            self.drop_finish_answers -= 1
            self.stats["finish_answers_dropped"] += 1
            return text(503, "the answer to this last fragment was lost (on purpose)")
        return js(200 if replaced else 201, self.graph_item(p))  # documented: 201 Created or 200 OK

    def graph_mkdir(self, req, p):
        body = self.graph_body(req, {"name", "folder", "@microsoft.graph.conflictBehavior", "description"})
        name = body.get("name")
        if self.kind(p) != "folder":
            raise self.gerr(400, "invalidRequest", "The parent is not a folder", log="children of a file")
        if not isinstance(name, str) or not name or set(name) & set('/\\:*?"<>|') or body.get("folder") != {}:
            raise self.gerr(400, "invalidRequest", f"Invalid folder {body!r}", log="folder body")
        c = self.join(p, name)
        if self.kind(c) and self.behavior(req, body) == "fail":
            raise self.gerr(409, "nameAlreadyExists", "The specified item name already exists.")
        if self.kind(c) == "folder":
            # "replace" of a folder by a new folder: we answer with the folder kept as it is (undocumented).
            return js(200, self.selected(self.graph_item(c), req.query))
        if self.kind(c):
            self.remove(c)
        self.mkdirs(c)
        return js(201, self.selected(self.graph_item(c), req.query))

    def graph_delete(self, req, p):
        if p == "/":
            raise self.gerr(403, "accessDenied", "The root cannot be deleted", log="delete of the root")
        self.remove(p)  # folders with everything in them
        return Answer(204)

    def destination(self, req, p, body):
        ref = body.get("parentReference") or {}
        if set(ref) - {"id", "driveId", "path", "driveType"} or ref.get("driveId", DRIVE_ID) != DRIVE_ID:
            raise self.gerr(400, "invalidRequest", f"Invalid parentReference {ref!r}", log="parentReference")
        parent = self.parent(p)
        if ref.get("id"):
            num = ref["id"].removeprefix("FAKEDRIVE!")
            parent = self.paths.get(int(num)) if num.isdigit() else None
        elif ref.get("path"):
            parent = self.norm(urllib.parse.unquote(ref["path"].removeprefix("/drive/root:")))
        name = body.get("name", self.name(p))
        if parent is None or self.kind(parent) != "folder":
            raise self.gerr(404, "itemNotFound", "The destination folder was not found", log="unknown parent")
        if not isinstance(name, str) or not name or "/" in name:
            raise self.gerr(400, "invalidRequest", f"Invalid name {name!r}", log="name")
        dst = self.join(parent, name)
        if dst == p or dst.startswith(p + "/"):
            raise self.gerr(400, "invalidRequest", "An item cannot be moved or copied into itself", log="nested")
        return dst

    def graph_patch(self, req, p):
        body = self.graph_body(req, {"name", "parentReference", "@microsoft.graph.conflictBehavior", "description"})
        if p == "/":
            raise self.gerr(403, "accessDenied", "The root cannot be moved", log="patch of the root")
        dst = self.destination(req, p, body)
        if self.kind(dst):
            if self.behavior(req, body) == "fail":
                raise self.gerr(409, "nameAlreadyExists", "The specified item name already exists.")
            self.remove(dst)
        self.move(p, dst)
        return js(200, self.selected(self.graph_item(dst), req.query))

    def graph_copy(self, req, p):
        body = self.graph_body(req, {"name", "parentReference", "@microsoft.graph.conflictBehavior"})
        dst, mid = self.destination(req, p, body), secrets.token_urlsafe(16)
        if self.kind(dst) and self.behavior(req, body) == "fail":  # reported by the monitor, not by the POST
            self.monitors[mid] = {"status": "failed", "percentageComplete": 0.0,
                                  "error": {"code": "nameAlreadyExists", "message": "The item already exists"}}
        else:
            if self.kind(dst):
                self.remove(dst)
            self.copy(p, dst)
            self.monitors[mid] = {"@odata.context": f"{self.base()}/$metadata#oneDrive.asynchronousOperationStatus",
                                  "percentageComplete": 100.0, "resourceId": self.graph_id(dst), "status": "completed"}
        return Answer(202, b"", {"Location": f"{self.base()}/_monitor/{mid}"})

    def graph_versions(self, req, p):
        if self.kind(p) != "file":
            raise self.gerr(400, "invalidRequest", "Folders have no versions", log="versions of a folder")
        it = self.graph_item(p)
        v = {"id": "1.0", "lastModifiedDateTime": it["lastModifiedDateTime"], "size": it["size"]}
        return js(200, {"value": [self.selected(v, req.query)]})

    # ---- pCloud ---------------------------------------------------------------------------------------------

    FILE_METHODS = {"stat", "uploadfile", "getfilelink", "deletefile", "renamefile", "copyfile"}
    METHODS = FILE_METHODS | {"listfolder", "createfolderifnotexists", "deletefolder", "renamefolder", "copyfolder"}

    def pc_meta(self, p, contents=False, recursive=False):
        st, folder = self.stat(p), self.kind(p) == "folder"
        m = {"name": self.name(p) if p != "/" else "/", "path": p, "created": rfc2822(st.st_mtime),
             "modified": rfc2822(st.st_mtime), "isfolder": folder, "ismine": True, "isshared": False,
             "thumb": False, "icon": "folder" if folder else "file"}
        if p != "/":
            m["parentfolderid"] = self.id_of(self.parent(p))
        if folder:
            m.update(folderid=self.id_of(p), id=f"d{self.id_of(p)}")
            if contents:
                m["contents"] = [self.pc_meta(c, recursive, recursive) for c in self.children(p)]
        else:
            m.update(fileid=self.id_of(p), id=f"f{self.id_of(p)}", size=st.st_size, category=0,
                     contenttype=mimetypes.guess_type(p)[0] or "application/octet-stream",
                     hash=int(self.digest(p, "sha1")[:16], 16))
        return m

    def pc_api(self, req):
        if req.path.startswith("/_dl/"):  # download links: no authentication
            p = self.links.get(req.path[5:].partition("/")[0])
            if req.method != "GET" or not p or self.kind(p) != "file":
                return Answer(410, b"<html><body>Invalid link</body></html>", {"Content-Type": "text/html"},
                              log="unknown or stale download link")
            return self.serve(p, req.headers.get("Range"), {})
        method = req.path[1:]
        if method == "userinfo":
            if self.token_state(req.bearer() or req.query.get("access_token")):
                return js(200, {"result": 1000, "error": "Log in required."})
            return js(200, {"result": 0, "userid": 1, "email": self.ACCOUNT_EMAIL, "emailverified": True,
                            "quota": 10 << 30, "usedquota": 0, "premium": False})
        if method not in self.METHODS:
            raise text(404, f"unknown pCloud method {req.path}")
        if req.method not in ("GET", "POST") and not (method == "uploadfile" and req.method == "PUT"):
            raise text(400, f"{req.method} is not accepted by {method}")
        p = {**req.query, **((req.form() or {}) if req.method == "POST" else {})}

        def fail(code, msg, why=None):
            self.stats["unauthorized"] += code in (1000, 2000, 2094)
            return js(200, {"result": code, "error": msg}, log=why)

        if "username" in p or "password" in p:  # our client must never put a password in a URL
            self.stats["password_in_url"] += 1
            raise fail(2000, "Log in failed.", "username/password sent in the request")
        state = self.token_state(req.bearer() or p.get("access_token"))
        if state:
            raise fail(1000, "Log in required.", "no access token") if state == "missing" else \
                fail(2094, "Invalid 'access_token' provided.", "unknown access token")
        paths = {}
        for key in ("path", "topath"):
            if key in p:
                try:
                    assert p[key].startswith("/")
                    paths[key] = self.norm(p[key])
                except (AssertionError, ValueError):
                    raise fail(2010, "Invalid path.", f"{key} {p[key]!r}")
        if "path" not in paths:
            raise fail(1004, "No fileid or path provided.", "no path") if method in self.FILE_METHODS else \
                fail(1002, "No full path or folderid provided.", "no path")
        return getattr(self, "pc_" + method)(req, p, paths["path"], paths, fail)

    def pc_missing(self, path, fail, code, msg):
        """pCloud's answer for a missing `path`: 2002 when a parent folder is missing too."""
        if any(self.kind(a) != "folder" for a in self.ancestors(path)):
            return fail(2002, "A component of parent directory does not exist.")
        return fail(code, msg)

    def pc_stat(self, req, p, path, paths, fail):
        if not self.kind(path):  # 2055 is what stat is observed to answer for a missing item (undocumented)
            return self.pc_missing(path, fail, 2055, "File or folder not found.")
        return js(200, {"result": 0, "metadata": self.pc_meta(path)})

    def pc_listfolder(self, req, p, path, paths, fail):
        if self.kind(path) != "folder":
            return fail(2005, "Directory does not exist.")
        return js(200, {"result": 0, "metadata": self.pc_meta(path, True, bool(p.get("recursive")))})

    def pc_createfolderifnotexists(self, req, p, path, paths, fail):
        if self.kind(path) == "folder":
            return js(200, {"result": 0, "created": False, "metadata": self.pc_meta(path)})
        if self.kind(self.parent(path)) != "folder":
            return fail(2002, "A component of parent directory does not exist.")
        if self.kind(path):
            return fail(2004, "File or folder alredy exists.")  # sic, as pCloud spells it
        self.mkdirs(path)
        return js(200, {"result": 0, "created": True, "metadata": self.pc_meta(path)})

    def pc_uploadfile(self, req, p, path, paths, fail):
        name = p.get("filename", "")
        if req.method != "PUT":
            raise text(400, "only PUT uploads (with filename=) are implemented here")
        if not name or "/" in name or name in (".", ".."):
            return fail(2001, "Invalid file/folder name.", f"filename {name!r}")
        if self.kind(path) != "folder":
            return fail(2005, "Directory does not exist.")
        dst = self.join(path, name)
        if self.kind(dst) == "folder":
            return fail(2004, "File or folder alredy exists.")
        if p.get("nopartial") != "1":
            # Without nopartial, pCloud keeps what arrived of a broken-off upload under the final name.
            self.stats["uploads_keeping_partial"] += 1
        self.stats["uploads"] += 1
        if "Content-Length" not in req.headers:
            self.stats["uploads_without_length"] += 1
        if self.fail_uploads > 0:
            self.fail_uploads -= 1
            self.stats["uploads_failed_on_demand"] += 1
            return fail(5000, "Internal error. Try again later.", "upload refused on demand")
        self.write(dst, req.body)  # an existing file is replaced (a new revision on pCloud)
        if p.get("mtime", "").isdigit():
            os.utime(self.local(dst), (int(p["mtime"]), int(p["mtime"])))
        m = self.pc_meta(dst)
        return js(200, {"result": 0, "metadata": [m], "fileids": [m["fileid"]],
                        "checksums": [{"sha1": self.digest(dst, "sha1"), "sha256": self.digest(dst, "sha256")}]})

    def pc_getfilelink(self, req, p, path, paths, fail):
        if self.kind(path) != "file":
            return self.pc_missing(path, fail, 2009, "File not found.")
        token = secrets.token_urlsafe(24)
        self.links[token] = path
        return js(200, {"result": 0, "path": f"/_dl/{token}/{urllib.parse.quote(self.name(path))}",
                        "expires": rfc2822(time.time() + 6 * 3600), "hosts": [f"127.0.0.1:{self.port}"]})

    def pc_deletefile(self, req, p, path, paths, fail):
        if self.kind(path) != "file":
            return self.pc_missing(path, fail, 2009, "File not found.")
        m = {**self.pc_meta(path), "isdeleted": True}
        self.remove(path)
        return js(200, {"result": 0, "metadata": m})

    def pc_deletefolder(self, req, p, path, paths, fail):
        if path == "/":
            return fail(2007, "Cannot delete the root folder.", "delete of the root")
        if self.kind(path) != "folder":
            return fail(2005, "Directory does not exist.")
        if self.children(path):  # deletefolderrecursive is another method
            return fail(2006, "Folder is not empty.")
        m = {**self.pc_meta(path), "isdeleted": True}
        self.remove(path)
        return js(200, {"result": 0, "metadata": m})

    def pc_dest(self, p, paths, fail, src):
        """Where `topath` puts `src`: into that existing folder when it ends with '/', else at that very path."""
        if "topath" not in paths:
            raise fail(1037, "Please provide at least one of 'topath', 'tofolderid' or 'toname'.", "no topath")
        into = p["topath"].endswith("/")
        if self.kind(paths["topath"] if into else self.parent(paths["topath"])) != "folder":
            raise fail(2005, "Directory does not exist.")
        return self.join(paths["topath"], self.name(src)) if into else paths["topath"]

    def pc_renamefile(self, req, p, src, paths, fail, copy=False):
        if self.kind(src) != "file":
            return self.pc_missing(src, fail, 2009, "File not found.")
        dst, extra = self.pc_dest(p, paths, fail, src), {}
        if self.kind(dst) == "folder":
            return fail(2004, "File or folder alredy exists.")
        if self.kind(dst) and dst != src:  # documented: an existing file is replaced (atomically, for rename)
            extra = {} if copy else {"deletedfileid": self.id_of(dst)}
            self.remove(dst)
        if dst != src:
            (self.copy if copy else self.move)(src, dst)
        return js(200, {"result": 0, "metadata": {**self.pc_meta(dst), **extra}})

    def pc_copyfile(self, req, p, src, paths, fail):
        return self.pc_renamefile(req, p, src, paths, fail, copy=True)

    def pc_renamefolder(self, req, p, src, paths, fail, copy=False):
        if src == "/":
            return fail(2042, "Cannot rename the root folder.", "rename of the root")
        if self.kind(src) != "folder":
            return fail(2005, "Directory does not exist.")
        dst = self.pc_dest(p, paths, fail, src)
        if dst == src or dst.startswith(src + "/"):
            return fail(2206, "Can not copy folder into itself.") if copy else \
                fail(2043, "Cannot move a folder to a subfolder of itself.")
        if self.kind(dst) == "file" or (self.kind(dst) and not copy):  # copyfolder merges into a folder
            return fail(2004, "File or folder alredy exists.")
        (self.copy if copy else self.move)(src, dst)
        return js(200, {"result": 0, "metadata": self.pc_meta(dst)})

    def pc_copyfolder(self, req, p, src, paths, fail):
        return self.pc_renamefolder(req, p, src, paths, fail, copy=True)


class Handler(https_fake.Handler):
    server_version = "clouds-fake/1"
    tag = "clouds"

    def answer(self, body):
        cloud = self.server.app
        cloud.enter()
        try:
            return cloud.handle(Req(self.command, self.path, self.headers, body))
        finally:
            cloud.leave()

    def internal_error(self):
        return text(500, "internal error in the fake")


def main():
    ap = argparse.ArgumentParser(description="Fake Dropbox, OneDrive and pCloud servers over HTTPS.")
    ap.add_argument("provider", choices=["dropbox", "onedrive", "pcloud"])
    for name in ("dir", "root", "cert", "key"):
        ap.add_argument(name)
    ap.add_argument("--token-ttl", type=int, default=3600, help="access token lifetime in seconds (not pcloud)")
    ap.add_argument("--rate-limit", type=int, default=None, help="answer every Nth API request 429")
    ap.add_argument("--max-upload", type=int, default=150 * MiB, help="dropbox: the largest /2/files/upload body")
    ap.add_argument("--drop-session-answers", type=int, default=0,
                    help="dropbox, onedrive: lose the answers to this many upload_session/append_v2 calls or "
                         "upload fragments (the piece is kept)")
    ap.add_argument("--drop-finish-answers", type=int, default=0,
                    help="dropbox, onedrive: lose the answers to this many upload_session/finish calls or last "
                         "fragments (the file is made)")
    ap.add_argument("--fail-uploads", type=int, default=0,
                    help="pcloud: refuse this many uploadfile calls with result 5000 once their body has arrived")
    ap.add_argument("--single-use-refresh", action="store_true",
                    help="onedrive: a refresh token is refused once it has been used (the client keeps the new one)")
    a = ap.parse_args()
    os.makedirs(a.root, exist_ok=True)
    cloud = Cloud(a.provider, a.dir, a.root, a.token_ttl, a.rate_limit, a.max_upload)
    cloud.single_use_refresh = a.single_use_refresh
    cloud.drop_session_answers = a.drop_session_answers
    cloud.drop_finish_answers = a.drop_finish_answers
    cloud.fail_uploads = a.fail_uploads
    with cloud.lock:
        cloud.write_stats()

    def info(port):
        cloud.port = port
        out = {"port": port, "provider": a.provider, "client_id": cloud.client_id}
        if cloud.client_secret:
            out["client_secret"] = cloud.client_secret
        return out

    https_fake.serve(Handler, cloud, a.dir, a.cert, a.key, info)


if __name__ == "__main__":
    main()
