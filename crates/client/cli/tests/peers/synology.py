#!/usr/bin/env python3
"""A fake of Synology DSM's File Station HTTPS API for the connector tests, on 127.0.0.1 over HTTPS.

    synology.py synology DIR ROOT CERT KEY [--session-calls N] [--busy N] [--move-polls N] [--otp CODE]

It follows Synology's "File Station Official API Guide" for exactly the calls the client makes:
SYNO.API.Info query (at /webapi/query.cgi), SYNO.API.Auth login and logout, and in /webapi/entry.cgi
SYNO.FileStation.List (list_share, list with pattern and filetype, getinfo), Download (download, with Range), Upload (upload: a
multipart POST whose file part comes last), Delete (delete, the blocking method), CreateFolder (create),
Rename (rename) and CopyMove (start, then status until finished). Each folder under ROOT is a shared folder
(ROOT/home/a.txt is /home/a.txt), so a test can compare trees. One account, alice, with the password in
DIR/peer.json ({"port", "user", "password"}).

Answers are the guide's envelope: {"success": true, "data": ...} or {"success": false, "error": {"code": N,
"errors": [{"code": N, "path": P}]}}, with the guide's codes (101-119 common, 400-421 file operations, 900
delete, 1000-1002 copy/move, 1100 create folder, 1200 rename, 1800-1805 upload; sign-in 400-410). String
parameters are taken as given or as a JSON string; path lists as a JSON array or comma-separated, as DSM does.

The session id is taken from the `id` cookie or the `_sid` parameter; a session signed in with
enable_syno_token=yes gets a SynoToken, and its cookie-carried calls are refused (119) without the token in the
X-SYNO-TOKEN header or SynoToken parameter, as DSM 7's CSRF guard does. String parameters (folder_path,
dest_folder_path, taskid) given raw are split at commas, as DSM does with raw values, and refused when that
gives more than one value; JSON strings are not split. DIR/stats.json (rewritten after every
request) counts what happened, and what a careful client never does: password_in_url (the password in an
address), sid_in_url (the session id in an address), direct_uploads (an upload into a folder that is not a
staging folder `.cloudsync-*.partial`, which would let a half-sent file replace a good one).

--otp CODE turns on 2-step verification for alice: a sign-in needs otp_code=CODE (else 403; a wrong code 404)
or the device_id of a device enrolled before; a sign-in with the code and enable_device_token=yes enrols a
device and answers its token as "did" (the guide's SYNO.API.Auth version 6 login).
--session-calls N ends each session after N calls (error 106, as a timed-out one); --busy N answers every Nth
File Station call with error 402 (system too busy); --move-polls N makes a move report unfinished N times
before it finishes. A test can make the next move report success without moving anything (as a NAS whose
task failed silently might) with GET /fake/break-next-move.

What it does NOT prove: it is not DSM. No ACLs, quotas, share permissions, 2-step verification, recycle bin,
file-system limits (name length, FAT) or background-task concurrency; a move is a rename on one disk. Where the
guide is silent, the comment at that spot says what we chose.
"""
import argparse
import fnmatch
import json
import os
import re
import secrets
import shutil
import sys
import threading
import urllib.parse

import https_fake

APIS = {  # name -> (path, minVersion, maxVersion), as DSM 7 reports them
    "SYNO.API.Auth": ("entry.cgi", 1, 7),
    "SYNO.FileStation.Info": ("entry.cgi", 1, 2),
    "SYNO.FileStation.List": ("entry.cgi", 1, 2),
    "SYNO.FileStation.Download": ("entry.cgi", 1, 2),
    "SYNO.FileStation.Upload": ("entry.cgi", 1, 3),
    "SYNO.FileStation.Delete": ("entry.cgi", 1, 2),
    "SYNO.FileStation.CreateFolder": ("entry.cgi", 1, 2),
    "SYNO.FileStation.Rename": ("entry.cgi", 1, 2),
    "SYNO.FileStation.CopyMove": ("entry.cgi", 1, 3),
}


def log(msg):
    print(f"synology: {msg}", file=sys.stderr, flush=True)


class Answer(Exception):
    def __init__(self, status, body=b"", headers=None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, dict(headers or {})


def ok(data=None):
    body = {"success": True} if data is None else {"success": True, "data": data}
    return Answer(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


class Fail(Exception):
    """A File Station error: `code`, and per-path `errors`."""

    def __init__(self, code, errors=None, why=None):
        super().__init__(code)
        self.code, self.errors, self.why = code, errors, why


def is_staging(folder):
    base = folder.rstrip("/").rsplit("/", 1)[-1]
    return base.startswith(".cloudsync-") and base.endswith(".partial")


class Nas:
    def __init__(self, dir, root, session_calls, busy, move_polls, otp=None):
        self.dir, self.root = dir, os.path.realpath(root)
        self.session_calls, self.busy, self.move_polls = session_calls, busy, move_polls
        self.otp, self.devices = otp, set()  # the one-time code alice's app shows; enrolled device tokens
        self.user = "alice"
        self.password = "p@ss w&rd=" + secrets.token_urlsafe(8)
        self.sessions, self.tasks = {}, {}  # sid -> [calls made, token]; taskid -> [polls left, error]
        self.break_next_move = False
        self.lock = threading.Lock()
        self.calls = 0
        self.stats = {k: 0 for k in ("requests", "logins", "sessions_expired", "busy", "uploads", "moves",
                                     "move_polls", "renames", "downloads", "ranged_downloads",
                                     "password_in_url", "sid_in_url", "direct_uploads", "max_upload",
                                     "logouts", "broken_moves", "otp_logins", "device_logins")}

    def write_stats(self):
        https_fake.write_json(self.dir, "stats.json", self.stats)

    # ---- paths ------------------------------------------------------------------------------------------------

    def local(self, path):
        """The disk path of a File Station path, which starts with a shared folder."""
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise Fail(418, [{"code": 418, "path": str(path)}], f"not an absolute path: {path!r}")
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise Fail(418, [{"code": 418, "path": path}], f"dot segment in {path!r}")
        if not parts or not os.path.isdir(os.path.join(self.root, parts[0])):
            raise Fail(408, [{"code": 408, "path": path}], f"no shared folder for {path!r}")
        full = os.path.join(self.root, *parts)
        assert os.path.realpath(full).startswith(self.root + os.sep)
        return full

    def entry(self, path, full, additional):
        st = os.stat(full)
        e = {"isdir": os.path.isdir(full), "name": path.rstrip("/").rsplit("/", 1)[-1], "path": path}
        add = {}
        if "size" in additional:
            add["size"] = 0 if e["isdir"] else st.st_size
        if "time" in additional:
            add["time"] = {k: int(st.st_mtime) for k in ("atime", "mtime", "ctime", "crtime")}
        if add:
            e["additional"] = add
        return e

    # ---- requests ---------------------------------------------------------------------------------------------

    def handle(self, method, target, headers, body):
        with self.lock:
            self.stats["requests"] += 1
            try:
                ans = self.route(method, target, headers, body)
            except Answer as a:
                ans = a
            except Fail as f:
                log(f"error {f.code}: {f.why or ''} {f.errors or ''}")
                err = {"code": f.code}
                if f.errors:
                    err["errors"] = f.errors
                ans = Answer(200, json.dumps({"success": False, "error": err}).encode(),
                             {"Content-Type": "application/json"})
            self.write_stats()
            return ans

    def route(self, method, target, headers, body):
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        params, file = dict(query), None
        ctype = headers.get("Content-Type", "")
        if method == "POST" and ctype.startswith("application/x-www-form-urlencoded"):
            params.update(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
        elif method == "POST" and ctype.startswith("multipart/form-data"):
            fields, file = self.multipart(ctype, body)
            params.update(fields)
        if "passwd" in query:
            self.stats["password_in_url"] += 1
        if "_sid" in query:
            self.stats["sid_in_url"] += 1
        api, meth = params.get("api", ""), params.get("method", "")
        if url.path == "/webapi/query.cgi" and api == "SYNO.API.Info" and meth == "query":
            wanted = params.get("query", "all")
            names = APIS if wanted == "all" else [n for n in wanted.split(",") if n in APIS]
            return ok({n: {"path": APIS[n][0], "minVersion": APIS[n][1], "maxVersion": APIS[n][2]} for n in names})
        if url.path == "/fake/break-next-move":
            self.break_next_move = True
            return ok()
        if url.path != "/webapi/entry.cgi":
            raise Answer(404, b"<html>not found</html>", {"Content-Type": "text/html"})
        if api not in APIS:
            raise Fail(102, why=f"no API {api!r}")
        try:
            version = int(params.get("version", ""))
        except ValueError:
            raise Fail(101, why="no version")
        if not APIS[api][1] <= version <= APIS[api][2]:
            raise Fail(104, why=f"{api} version {version}")
        if api == "SYNO.API.Auth":
            return self.auth(meth, params, headers)
        cookie = self.cookie(headers).get("id")
        sid = cookie or params.get("_sid")
        session = self.sessions.get(sid)
        if session is None:
            raise Fail(119, why="no such session")
        if cookie and session[1] and session[1] not in (headers.get("X-SYNO-TOKEN"), params.get("SynoToken")):
            raise Fail(119, why="a cookie-carried call without the session's SynoToken")
        if self.session_calls and session[0] >= self.session_calls:
            del self.sessions[sid]
            self.stats["sessions_expired"] += 1
            raise Fail(106)
        session[0] += 1
        self.calls += 1
        if self.busy and self.calls % self.busy == 0:
            self.stats["busy"] += 1
            raise Fail(402)
        shown = {k: v for k, v in params.items() if k not in ("api", "version", "method", "passwd", "_sid")}
        log(f"{api} {meth} {shown}{' file=' + repr(file[0]) if file else ''}")
        handler = getattr(self, "fs_" + api.rsplit(".", 1)[-1].lower() + "_" + meth, None)
        if handler is None:
            raise Fail(103, why=f"{api} has no method {meth!r} here")
        return handler(params, headers, file)

    @staticmethod
    def cookie(headers):
        out = {}
        for part in headers.get("Cookie", "").split(";"):
            if "=" in part:
                k, v = part.strip().split("=", 1)
                out[k] = v
        return out

    @staticmethod
    def multipart(ctype, body):
        boundary = ctype.split("boundary=", 1)[1].strip().strip('"').encode()
        fields, file = {}, None
        chunks = body.split(b"--" + boundary)
        parts = [c for c in chunks[1:] if not c.startswith(b"--")]
        for i, part in enumerate(parts):
            head, _, data = part[2:].partition(b"\r\n\r\n")
            data = data[:-2]  # the CRLF before the next boundary
            disp = next((h for h in head.decode().split("\r\n") if h.lower().startswith("content-disposition")), "")
            attrs = dict(re.findall(r';\s*(\w+)="([^"]*)"', disp))
            if "filename" in attrs:
                if i != len(parts) - 1:  # the guide: the file must be the last part
                    raise Fail(101, why="the file part is not the last one")
                file = (attrs["filename"], data)
            else:
                fields[attrs.get("name", "")] = data.decode()
        return fields, file

    @staticmethod
    def string(params, name):
        v = params.get(name)
        if v is None:
            raise Fail(101, why=f"no {name}")
        if v.startswith('"'):
            return json.loads(v)
        if "," in v:  # a raw value is a comma-separated list to DSM
            raise Fail(400, why=f"{name} {v!r} is several values (send it as a JSON string)")
        return v

    @staticmethod
    def paths(params, name):
        v = params.get(name)
        if v is None:
            raise Fail(101, why=f"no {name}")
        if v.startswith("["):
            out = json.loads(v)
            if not all(isinstance(p, str) for p in out):
                raise Fail(400, why=f"{name} is not a list of strings")
            return out
        return v.split(",")

    @staticmethod
    def flag(params, name, default=False):
        return params.get(name, "true" if default else "false").lower() == "true"

    # ---- SYNO.API.Auth ----------------------------------------------------------------------------------------

    def auth(self, meth, params, headers):
        if meth == "login":
            if params.get("account") != self.user or params.get("passwd") != self.password:
                raise Fail(400, why="wrong user name or password")
            did = None
            if self.otp is not None:
                if params.get("device_id") in self.devices and params.get("device_name"):
                    self.stats["device_logins"] += 1
                elif "otp_code" not in params:
                    raise Fail(403, why="2-step verification code required")
                elif params["otp_code"] != self.otp:
                    raise Fail(404, why="wrong 2-step verification code")
                else:
                    self.stats["otp_logins"] += 1
                    if params.get("enable_device_token") == "yes" and params.get("device_name"):
                        did = secrets.token_urlsafe(24)
                        self.devices.add(did)
            sid = secrets.token_urlsafe(24)
            token = secrets.token_urlsafe(9) if params.get("enable_syno_token") == "yes" else None
            self.sessions[sid] = [0, token]
            self.stats["logins"] += 1
            if params.get("format", "cookie") == "sid":
                return ok({"sid": sid, **({"synotoken": token} if token else {}), **({"did": did} if did else {})})
            a = ok({})
            a.headers["Set-Cookie"] = f"id={sid}; path=/"
            return a
        if meth == "logout":
            sid = self.cookie(headers).get("id") or params.get("_sid")
            if self.sessions.pop(sid, None) is not None:
                self.stats["logouts"] += 1
            return ok()
        raise Fail(103)

    # ---- SYNO.FileStation.* -----------------------------------------------------------------------------------

    def fs_list_list_share(self, params, headers, file):
        additional = params.get("additional", "")
        shares = sorted(n for n in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, n)))
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 0)) or len(shares)
        limit = min(limit, 7)  # as for list: small pages show paging
        page = [self.entry("/" + n, os.path.join(self.root, n), additional) for n in shares[offset:offset + limit]]
        return ok({"shares": page, "offset": offset, "total": len(shares)})

    def fs_list_list(self, params, headers, file):
        folder = self.string(params, "folder_path")
        full = self.local(folder)
        if not os.path.isdir(full):
            raise Fail(408, why=f"no folder {folder!r}")
        additional = params.get("additional", "")
        names = sorted(os.listdir(full))
        if "pattern" in params:  # the guide: glob patterns, case-insensitive
            globs = [g.lower() for g in self.paths(params, "pattern")] if params["pattern"].startswith("[") \
                else [self.string(params, "pattern").lower()]
            names = [n for n in names if any(fnmatch.fnmatchcase(n.lower(), g) for g in globs)]
        kind = self.string(params, "filetype") if "filetype" in params else "all"
        if kind in ("file", "dir"):
            names = [n for n in names if os.path.isdir(os.path.join(full, n)) == (kind == "dir")]
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 0)) or len(names)
        # The guide caps nothing; DSM's own pages are at most a few thousand, so a small cap shows paging.
        limit = min(limit, 7)
        page = [self.entry(folder.rstrip("/") + "/" + n, os.path.join(full, n), additional)
                for n in names[offset:offset + limit]]
        return ok({"files": page, "offset": offset, "total": len(names)})

    def fs_list_getinfo(self, params, headers, file):
        out = []
        for p in self.paths(params, "path"):
            try:
                full = self.local(p)
            except Fail:
                full = None
            if full is None or not os.path.exists(full):
                out.append({"code": 408, "name": "", "path": p})  # DSM answers success with the path's code
            else:
                out.append(self.entry(p, full, params.get("additional", "")))
        return ok({"files": out})

    def fs_download_download(self, params, headers, file):
        paths = self.paths(params, "path")
        if len(paths) != 1:
            raise Fail(400, why="this fake downloads one file at a time (DSM zips several)")
        full = self.local(paths[0])
        if not os.path.isfile(full):
            # The guide does not say; DSM answers a missing file with 404 and an error envelope.
            raise Answer(404, json.dumps({"success": False, "error": {"code": 408}}).encode(),
                         {"Content-Type": "application/json"})
        with open(full, "rb") as f:
            data = f.read()
        self.stats["downloads"] += 1
        name = urllib.parse.quote(os.path.basename(full))
        h = {"Content-Type": "application/octet-stream", "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
             "Accept-Ranges": "bytes"}
        rng = headers.get("Range")
        if rng and rng.startswith("bytes="):
            start, _, end = rng[6:].partition("-")
            start = int(start)
            end = int(end) if end else len(data) - 1
            if start >= len(data) and data:
                raise Answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            self.stats["ranged_downloads"] += 1
            h["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            raise Answer(206, data[start:end + 1], h)
        raise Answer(200, data, h)

    def fs_upload_upload(self, params, headers, file):
        if file is None:
            raise Fail(1802, why="no file part")
        folder = self.string(params, "path")
        name, data = file
        if not name or "/" in name or name in (".", ".."):
            raise Fail(419, why=f"illegal file name {name!r}")
        if not is_staging(folder):
            self.stats["direct_uploads"] += 1
        full = self.local(folder)
        if not os.path.isdir(full):
            if not self.flag(params, "create_parents", default=True):
                raise Fail(408, why=f"no folder {folder!r}")
            os.makedirs(full)
        dest = os.path.join(full, name)
        if os.path.exists(dest):
            if "overwrite" not in params:
                raise Fail(1805)
            if not self.flag(params, "overwrite"):
                raise Fail(414)
        tmp = os.path.join(self.root, f".upload-{secrets.token_hex(6)}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
        self.stats["uploads"] += 1
        self.stats["max_upload"] = max(self.stats["max_upload"], len(data))
        return ok()

    def fs_delete_delete(self, params, headers, file):
        errors = []
        for p in self.paths(params, "path"):
            full = self.local(p)
            if p.strip("/").count("/") == 0:
                errors.append({"code": 407, "path": p})  # a shared folder itself
            elif os.path.isdir(full) and not os.path.islink(full):
                if os.listdir(full) and not self.flag(params, "recursive", default=True):
                    errors.append({"code": 900, "path": p})
                else:
                    shutil.rmtree(full)
            elif os.path.exists(full):
                os.remove(full)
            else:
                errors.append({"code": 408, "path": p})
        if errors:
            raise Fail(900, errors)
        return ok()

    def fs_createfolder_create(self, params, headers, file):
        parents, names = self.paths(params, "folder_path"), self.paths(params, "name")
        if len(parents) != len(names):
            raise Fail(400, why="folder_path and name differ in number")
        force, made = self.flag(params, "force_parent"), []
        for parent, name in zip(parents, names):
            if not name or "/" in name or name in (".", ".."):
                raise Fail(1100, [{"code": 418, "path": parent}])
            full = os.path.join(self.local(parent), name)
            if os.path.isfile(full):
                raise Fail(1100, [{"code": 414, "path": parent + "/" + name}])
            if not os.path.isdir(self.local(parent)) and not force:
                raise Fail(1100, [{"code": 408, "path": parent}])
            if os.path.isdir(full) and not force:  # the guide: force_parent also means "no error if it exists"
                raise Fail(1100, [{"code": 414, "path": parent + "/" + name}])
            os.makedirs(full, exist_ok=True)
            made.append(self.entry(parent.rstrip("/") + "/" + name, full, ""))
        return ok({"folders": made})

    def fs_rename_rename(self, params, headers, file):
        paths, names = self.paths(params, "path"), self.paths(params, "name")
        if len(paths) != len(names):
            raise Fail(400, why="path and name differ in number")
        done = []
        for p, name in zip(paths, names):
            if not name or "/" in name or name in (".", ".."):
                raise Fail(1200, [{"code": 418, "path": p}])
            full = self.local(p)
            if not os.path.exists(full):
                raise Fail(1200, [{"code": 408, "path": p}])
            dest = os.path.join(os.path.dirname(full), name)
            if os.path.exists(dest):
                raise Fail(1200, [{"code": 414, "path": p}])
            os.rename(full, dest)
            self.stats["renames"] += 1
            done.append(self.entry(p.rsplit("/", 1)[0] + "/" + name, dest, ""))
        return ok({"files": done})

    def fs_copymove_start(self, params, headers, file):
        paths, dest = self.paths(params, "path"), self.string(params, "dest_folder_path")
        overwrite, remove = params.get("overwrite"), self.flag(params, "remove_src")
        task = f"FileStation_{secrets.token_hex(8).upper()}"
        error = None
        try:
            dest_full = self.local(dest)
            if not os.path.isdir(dest_full):
                raise Fail(1002, why=f"no destination folder {dest!r}")
            for p in paths:
                src = self.local(p)
                if not os.path.exists(src):
                    raise Fail(1001 if remove else 1000, [{"code": 408, "path": p}])
                target = os.path.join(dest_full, os.path.basename(src))
                if os.path.exists(target):
                    if overwrite is None or overwrite.lower() != "true":  # the guide: skipped unless overwrite
                        raise Fail(1001 if remove else 1000, [{"code": 414, "path": p}])
                    if os.path.isdir(target) != os.path.isdir(src):
                        raise Fail(1001 if remove else 1000, [{"code": 414, "path": p}])
                if remove and self.break_next_move:
                    self.break_next_move = False  # reported finished below, but nothing moved
                    self.stats["broken_moves"] += 1
                elif remove:
                    os.replace(src, target)  # one disk: the rename replaces the file at once
                    self.stats["moves"] += 1
                elif os.path.isdir(src):
                    shutil.copytree(src, target, dirs_exist_ok=True)
                else:
                    shutil.copy2(src, target)
        except Fail as f:
            error = f  # the task fails; its status says so
        self.tasks[task] = [self.move_polls, error]
        return ok({"taskid": task})

    def fs_copymove_status(self, params, headers, file):
        task = self.tasks.get(self.string(params, "taskid"))
        if task is None:
            raise Fail(599, why="no such task")
        self.stats["move_polls"] += 1
        if task[0] > 0:
            task[0] -= 1
            return ok({"finished": False, "progress": 0.5, "processed_size": 0, "total": -1})
        if task[1] is not None:
            raise task[1]
        return ok({"finished": True, "progress": 1, "processed_size": 0, "total": -1})


class Handler(https_fake.Handler):
    server_version = "nginx"
    tag = "synology"

    def answer(self, body):
        return self.server.app.handle(self.command, self.path, self.headers, body)

    def internal_error(self):
        return Answer(500, b"internal error in the fake", {"Content-Type": "text/plain"})


def main():
    ap = argparse.ArgumentParser(description="A fake of Synology's File Station API over HTTPS.")
    ap.add_argument("kind", choices=["synology"])
    for name in ("dir", "root", "cert", "key"):
        ap.add_argument(name)
    ap.add_argument("--session-calls", type=int, default=0, help="end each session after N calls (106)")
    ap.add_argument("--busy", type=int, default=0, help="answer every Nth File Station call 402 (too busy)")
    ap.add_argument("--move-polls", type=int, default=1, help="a move reports unfinished this many times")
    ap.add_argument("--otp", default=None, help="2-step verification: the code a sign-in must give")
    a = ap.parse_args()
    os.makedirs(a.root, exist_ok=True)
    nas = Nas(a.dir, a.root, a.session_calls, a.busy, a.move_polls, a.otp)
    with nas.lock:
        nas.write_stats()
    info = {"user": nas.user, "password": nas.password}
    https_fake.serve(Handler, nas, a.dir, a.cert, a.key, lambda port: {"port": port, **info})


if __name__ == "__main__":
    main()
