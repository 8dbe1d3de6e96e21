//! Synology DSM's File Station HTTPS API, as an OpenDAL service of our own (OpenDAL has none): sign-in with a
//! session id (SYNO.API.Auth), listing (SYNO.FileStation.List), download, upload, delete, folder creation and
//! moves (SYNO.FileStation.CopyMove), following Synology's "File Station Official API Guide".
//!
//! - The API's paths and versions are asked of the NAS (SYNO.API.Info) at each sign-in.
//! - The password goes in a POST body, never in an address; the session id goes in the `id` cookie, never in
//!   an address (addresses end up in error messages and proxy logs). A session the NAS ended (timed out,
//!   signed out elsewhere) is renewed once, shared by the requests that found it ended.
//! - An upload never replaces a file half-written: it goes to a hidden staging folder beside its destination
//!   (`.cloudsync-….partial`, skipped by listings) and is then moved over the destination in one step by
//!   File Station's move, which on one volume is a rename; the staging folder is then removed.
//! - Every request goes through the connection's HTTP transport, so the run's pace applies.

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use opendal::raw::oio;
use opendal::raw::oio::ReadStream as _;
use opendal::raw::{
    OpCopy, OpCreateDir, OpDelete, OpList, OpPresign, OpRead, OpRename, OpStat, OpWrite, RpCreateDir, RpPresign,
    RpRead, RpRename, RpStat, Service, ServiceInfo, Timestamp,
};
use opendal::{Buffer, BytesRange, Capability, EntryMode, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use serde_json::Value;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

/// The scheme the operator reports.
pub(crate) const SCHEME: &str = "synology";
/// Entries asked for per listing page.
const PAGE: u64 = 1000;
/// Longest API answer read (a listing page of `PAGE` entries is well under this).
const MAX_ANSWER: usize = 8 << 20;
/// Longest time a move is waited for (a move on one volume is a rename; across volumes it copies).
const MOVE_LIMIT: Duration = Duration::from_secs(3600);

/// How often one call signs in again when the NAS says its session ended (once is the rule; more when other
/// requests' sessions end meanwhile).
const RENEWALS: u32 = 3;
/// How often one call may find its ended session already replaced by another request before it gives up.
const CAUGHT_UP: u32 = 12;

/// How often one call the NAS answered "busy" (or with a passing I/O error) is sent again, after a growing
/// pause, before the error goes to OpenDAL's retry (which repeats a whole upload or listing).
const BUSY_TRIES: u32 = 6;
/// A staging folder older than this was left by an upload that was cut off (Ctrl-C, a lost connection), and
/// is removed the next time a file is uploaded into its shared folder.
const ABANDONED: Duration = Duration::from_secs(24 * 3600);

/// Waits before sending a call again (100 ms, 200 ms, 400 ms, ..., with jitter) and counts the try.
async fn pause(tries: u32) -> u32 {
    let base = 100u64 << tries.min(6);
    let mut noise = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise);
    let jitter = u64::from(u16::from_le_bytes(noise)) % (base / 2 + 1);
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
    tries + 1
}

/// The File Station APIs used, with the version this code speaks.
const APIS: [(&str, u32); 8] = [
    ("SYNO.API.Auth", 6),
    ("SYNO.FileStation.List", 2),
    ("SYNO.FileStation.Download", 2),
    ("SYNO.FileStation.Upload", 2),
    ("SYNO.FileStation.Delete", 2),
    ("SYNO.FileStation.CreateFolder", 2),
    ("SYNO.FileStation.Rename", 2),
    ("SYNO.FileStation.CopyMove", 3),
];

type Result<T> = opendal::Result<T>;

fn err(kind: ErrorKind, message: impl Into<String>) -> opendal::Error {
    opendal::Error::new(kind, message)
}

/// What the connection's settings give the service.
pub(crate) struct Settings {
    /// `https://nas:5001`, without a trailing slash.
    pub base: String,
    pub root: String,
    pub user: String,
    pub password: Zeroizing<String>,
    pub two_step: TwoStep,
}

/// The name this client's device goes by on the NAS (DSM: Personal > Security > Trusted devices).
const DEVICE_NAME: &str = "cloudsync";

/// 2-step verification: DSM trusts a device it enrolled with a one-time code, by a token it issued then.
#[derive(Default)]
pub(crate) struct TwoStep {
    /// The device token the NAS issued for this connection, sent instead of a code.
    pub device: Option<Zeroizing<String>>,
    /// A one-time code from the account's authenticator app, to enrol this device (`--otp-code`).
    pub code: Option<Zeroizing<String>>,
    /// Told the device token the NAS issues for the code.
    pub enrolled: Option<crate::oauth::SecretSink>,
}

/// The service.
#[derive(Clone)]
pub(crate) struct FileStation {
    core: Arc<Core>,
}

impl Debug for FileStation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStation").field("base", &self.core.base).field("root", &self.core.root).finish()
    }
}

pub(crate) struct Core {
    base: String,
    /// `/share/folder/`: where paths start, as OpenDAL normalises roots.
    root: String,
    user: String,
    password: Zeroizing<String>,
    two_step: TwoStep,
    session: Mutex<Option<Arc<Session>>>,
    /// Folders known to exist (made or checked by this service), so an upload makes its folder once.
    folders: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Shared folders swept of abandoned staging folders by this service.
    swept: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A signed-in session: its id and CSRF token, where each API lives and which version of it is spoken, and
/// the context it was made in (for signing out).
struct Session {
    sid: Zeroizing<String>,
    token: Option<Zeroizing<String>>,
    apis: HashMap<&'static str, (String, u32)>,
    generation: u64,
    /// DSM's address and the context the session was made in, for signing out.
    base: String,
    ctx: OperationContext,
}

/// The sessions this process opened, to be ended by [`sign_out`].
static OPEN: std::sync::Mutex<Vec<Arc<Session>>> = std::sync::Mutex::new(Vec::new());

/// Ends the File Station sessions this process opened (DSM keeps a session for days otherwise), each with one
/// try, all within a few seconds. Called by the CLI once a command is done.
pub async fn sign_out() {
    let open = std::mem::take(&mut *OPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let ends = open.iter().map(|session| async move {
        let Ok((path, version)) = session.api("SYNO.API.Auth") else { return };
        let body = form(&[
            ("api", "SYNO.API.Auth"),
            ("version", &version.to_string()),
            ("method", "logout"),
            ("session", "FileStation"),
        ]);
        let req = session
            .authorize(Request::post(format!("{}/webapi/{path}", session.base)))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Buffer::from(body));
        if let Ok(req) = req {
            let _ = exchange(&session.ctx, req).await;
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(3), futures_util::future::join_all(ends)).await;
}

/// Sends `req` and reads its answer, at most [`MAX_ANSWER`] bytes of it.
async fn exchange(ctx: &OperationContext, req: Request<Buffer>) -> Result<http::Response<Buffer>> {
    crate::exchange(ctx, req, MAX_ANSWER, "the NAS answered with more than 8 MiB; is the endpoint DSM's address?").await
}

/// How often a call has been sent again, and why.
#[derive(Default)]
struct Tries {
    /// Sign-ins this call made itself after its session ended.
    renewed: u32,
    /// Times the call found that another request had already replaced its ended session. With several requests
    /// in flight a session can end under a call more than [`RENEWALS`] times while every sign-in works, so these
    /// count against a looser bound of their own.
    caught_up: u32,
    busy: u32,
}

impl Tries {
    /// After `failure`: `Ok` to send again (with a new session, or after a pause), else the error to give up with.
    async fn again(
        &mut self,
        core: &Core,
        ctx: &OperationContext,
        session: &mut Arc<Session>,
        failure: Failure,
    ) -> Result<()> {
        match failure {
            // 105 ("no permission") is also what DSM answers a session from before it restarted: signing in
            // again is tried once.
            Failure::Session(code)
                if self.renewed < RENEWALS
                    && self.caught_up < CAUGHT_UP
                    && (code != 105 || self.renewed + self.caught_up == 0) =>
            {
                let (fresh, signed_in) = core.renew(ctx, session).await?;
                *session = fresh;
                if signed_in {
                    self.renewed += 1;
                } else {
                    self.caught_up += 1;
                }
                Ok(())
            }
            Failure::Session(code) => Err(file_station_error(code, "")),
            Failure::Other(e) if e.is_temporary() && self.busy < BUSY_TRIES => {
                self.busy = pause(self.busy).await;
                Ok(())
            }
            Failure::Other(e) => Err(e),
        }
    }
}

impl FileStation {
    pub(crate) fn new(s: Settings) -> Self {
        let root = opendal::raw::normalize_root(&s.root);
        Self {
            core: Arc::new(Core {
                base: s.base,
                root,
                user: s.user,
                password: s.password,
                two_step: s.two_step,
                session: Mutex::new(None),
                folders: std::sync::Mutex::default(),
                swept: std::sync::Mutex::default(),
            }),
        }
    }
}

/// A File Station answer that is not a success.
enum Failure {
    /// The session ended (DSM 106, 107, 119; perhaps 105): sign in again.
    Session(i64),
    Other(opendal::Error),
}

impl Core {
    /// The absolute File Station path of `path` (relative to the root), without a trailing slash; `/` for the
    /// top, where the shared folders are.
    fn abs(&self, path: &str) -> String {
        let joined = if path == "/" { self.root.clone() } else { format!("{}{path}", self.root) };
        let trimmed = joined.trim_end_matches('/');
        if trimmed.is_empty() { "/".into() } else { trimmed.to_owned() }
    }

    async fn session(&self, ctx: &OperationContext) -> Result<Arc<Session>> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref() {
            return Ok(s.clone());
        }
        let s = self.login(ctx, 0).await?;
        *current = Some(s.clone());
        Ok(s)
    }

    /// A new session in place of `stale`, unless another request has already made one; `true` with it when this
    /// call signed in.
    async fn renew(&self, ctx: &OperationContext, stale: &Session) -> Result<(Arc<Session>, bool)> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref()
            && s.generation != stale.generation
        {
            return Ok((s.clone(), false));
        }
        let s = self.login(ctx, stale.generation + 1).await?;
        *current = Some(s.clone());
        Ok((s, true))
    }

    async fn login(&self, ctx: &OperationContext, generation: u64) -> Result<Arc<Session>> {
        let query: Vec<&str> = APIS.iter().map(|(name, _)| *name).collect();
        let url = format!(
            "{}/webapi/query.cgi?{}",
            self.base,
            form(&[("api", "SYNO.API.Info"), ("version", "1"), ("method", "query"), ("query", &query.join(",")),])
        );
        let req = Request::get(url).body(Buffer::new()).map_err(build_error)?;
        let info = match envelope(exchange(ctx, req).await?) {
            Ok(data) => data,
            Err(Failure::Session(code)) => return Err(file_station_error(code, "asking which APIs the NAS offers")),
            Err(Failure::Other(e)) if code_of(&e).is_none() && !e.is_temporary() => {
                return Err(err(
                    ErrorKind::ConfigInvalid,
                    format!(
                        "{} did not answer as a Synology NAS ({}): give DSM's address, such as https://NAS:5001",
                        self.base,
                        e.message()
                    ),
                ));
            }
            Err(Failure::Other(e)) => return Err(e),
        };
        let mut apis = HashMap::new();
        for (name, want) in APIS {
            let Some(entry) = info.get(name) else {
                return Err(err(
                    ErrorKind::Unsupported,
                    format!(
                        "the NAS does not offer {name}: File Station is not running there, or this DSM is too old \
                         (DSM 6 or later is needed)"
                    ),
                ));
            };
            let path = entry["path"].as_str().unwrap_or("entry.cgi");
            let (min, max) = (entry["minVersion"].as_u64().unwrap_or(1), entry["maxVersion"].as_u64().unwrap_or(1));
            let version = if name == "SYNO.API.Auth" { max.min(u64::from(want)) } else { u64::from(want) };
            if version < min || version > max || (name == "SYNO.API.Auth" && version < 3) {
                return Err(err(
                    ErrorKind::Unsupported,
                    format!(
                        "the NAS offers {name} versions {min} to {max}, and this version of cloudsync speaks \
                         {want}: update DSM (6 or later)"
                    ),
                ));
            }
            if path.is_empty()
                || !path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/'))
                || path.contains("..")
            {
                return Err(err(ErrorKind::Unexpected, format!("the NAS named an odd path for {name}: {path:?}")));
            }
            apis.insert(name, (path.to_owned(), u32::try_from(version).unwrap_or(want)));
        }
        let (path, version) = &apis["SYNO.API.Auth"];
        let version = version.to_string();
        let mut fields = vec![
            ("api", "SYNO.API.Auth"),
            ("version", version.as_str()),
            ("method", "login"),
            ("account", self.user.as_str()),
            ("passwd", self.password.as_str()),
            ("session", "FileStation"),
            ("format", "sid"),
            ("enable_syno_token", "yes"),
        ];
        // A device enrolled before signs in with its token; a one-time code enrols this one.
        if let Some(code) = &self.two_step.code {
            fields.extend([("otp_code", code.as_str()), ("enable_device_token", "yes"), ("device_name", DEVICE_NAME)]);
        } else if let Some(device) = &self.two_step.device {
            fields.extend([("device_name", DEVICE_NAME), ("device_id", device.as_str())]);
        }
        let body = Zeroizing::new(form(&fields));
        let req = Request::post(format!("{}/webapi/{path}", self.base))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Buffer::from(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(build_error)?;
        let data = match envelope(exchange(ctx, req).await?) {
            Ok(data) => data,
            Err(Failure::Session(code)) => return Err(auth_error(code)),
            Err(Failure::Other(e)) => {
                return Err(match code_of(&e) {
                    Some(code) => auth_error(code),
                    None => e,
                });
            }
        };
        // The id and token go in headers: only characters a header (and a cookie value) may carry.
        let usable = |v: &str| v.len() <= 512 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let sid = data["sid"].as_str().unwrap_or_default();
        if sid.is_empty() || !usable(sid) {
            return Err(err(ErrorKind::Unexpected, "the NAS signed in but gave no usable session id"));
        }
        if self.two_step.code.is_some() {
            let did = data["did"].as_str().filter(|d| usable(d)).ok_or_else(|| {
                err(ErrorKind::Unexpected, "the NAS took the 2-step verification code but issued no device token")
            })?;
            if let Some(enrolled) = &self.two_step.enrolled {
                enrolled(did);
            }
        }
        let token = match data["synotoken"].as_str() {
            Some(t) if !t.is_empty() && usable(t) => Some(Zeroizing::new(t.to_owned())),
            Some(t) if !t.is_empty() => return Err(err(ErrorKind::Unexpected, "the NAS gave an unusable token")),
            _ => None,
        };
        let session = Arc::new(Session {
            sid: Zeroizing::new(sid.to_owned()),
            token,
            apis,
            generation,
            base: self.base.clone(),
            ctx: ctx.clone(),
        });
        OPEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(session.clone());
        Ok(session)
    }

    /// Calls `api`'s `method` with `params` (a form POST with the session cookie) and returns its `data`,
    /// signing in again once if the NAS ended the session.
    async fn call(&self, ctx: &OperationContext, api: &str, method: &str, params: &[(&str, &str)]) -> Result<Value> {
        let mut session = self.session(ctx).await?;
        let mut tries = Tries::default();
        loop {
            let (path, version) = session.api(api)?;
            let version = version.to_string();
            let mut fields = vec![("api", api), ("version", version.as_str()), ("method", method)];
            fields.extend_from_slice(params);
            let req = session
                .authorize(Request::post(format!("{}/webapi/{path}", self.base)))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Buffer::from(form(&fields)))
                .map_err(build_error)?;
            match envelope(exchange(ctx, req).await?) {
                Ok(data) => return Ok(data),
                Err(failure) => tries.again(self, ctx, &mut session, failure).await?,
            }
        }
    }

    async fn info(&self, ctx: &OperationContext, abs: &str) -> Result<Option<Metadata>> {
        if abs == "/" {
            return Ok(Some(MetadataBuilder::dir().build()));
        }
        Ok(self.infos(ctx, &[abs]).await?.pop().flatten())
    }

    /// The details of each of `paths` (`None`: there is nothing there), in one call.
    async fn infos(&self, ctx: &OperationContext, paths: &[&str]) -> Result<Vec<Option<Metadata>>> {
        let data = self
            .call(
                ctx,
                "SYNO.FileStation.List",
                "getinfo",
                &[("path", &json_list(paths)), ("additional", r#"["size","time"]"#)],
            )
            .await?;
        let files = data["files"].as_array().filter(|f| f.len() == paths.len()).ok_or_else(|| {
            err(ErrorKind::Unexpected, "the NAS answered getinfo without an entry for each path asked about")
        })?;
        files
            .iter()
            .map(|file| match file.get("code").and_then(Value::as_i64) {
                None => metadata(file).map(Some),
                Some(408) => Ok(None),
                Some(code) => Err(file_station_error(code, "reading the file's details")),
            })
            .collect()
    }

    /// Once per shared folder and service: removes the staging folders at its top that uploads cut off left
    /// behind (older than [`ABANDONED`]; younger ones may belong to an upload in progress elsewhere).
    async fn sweep(&self, ctx: &OperationContext, share: &str) {
        let top = format!("/{share}");
        if !self.swept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(top.clone()) {
            return;
        }
        let Ok(data) = self
            .call(
                ctx,
                "SYNO.FileStation.List",
                "list",
                &[
                    ("folder_path", &json_string(&top)),
                    ("pattern", &json_string(".cloudsync-*.partial")),
                    ("filetype", &json_string("dir")),
                    ("additional", r#"["time"]"#),
                ],
            )
            .await
        else {
            return;
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        for item in data["files"].as_array().into_iter().flatten() {
            let name = item["name"].as_str().unwrap_or_default();
            let mtime = item["additional"]["time"]["mtime"].as_u64().unwrap_or(now);
            if crate::transfer::is_partial(name)
                && item["isdir"] == true
                && now.saturating_sub(mtime) > ABANDONED.as_secs()
            {
                let _ = self.delete(ctx, &format!("{top}/{name}")).await;
            }
        }
    }

    /// Makes folder `abs` (and its parents) unless this service made or saw it already.
    async fn ensure_folder(&self, ctx: &OperationContext, abs: &str) -> Result<()> {
        if self.folders.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(abs) {
            return Ok(());
        }
        self.create_folder(ctx, abs).await?;
        let mut known = self.folders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.len() < 10_000 {
            known.insert(abs.to_owned());
        }
        Ok(())
    }

    async fn create_folder(&self, ctx: &OperationContext, abs: &str) -> Result<()> {
        let Some((parent, name)) = abs.rsplit_once('/') else { return Ok(()) };
        if parent.is_empty() {
            // A shared folder: made by the NAS's administrator, not through File Station.
            return match self.info(ctx, abs).await? {
                Some(_) => Ok(()),
                None => Err(err(
                    ErrorKind::NotFound,
                    format!(
                        "there is no shared folder {name:?} on the NAS (shared folders are made in DSM's Control \
                         Panel; paths start with one, as in /home/…)"
                    ),
                )),
            };
        }
        self.call(
            ctx,
            "SYNO.FileStation.CreateFolder",
            "create",
            &[("folder_path", &json_list(&[parent])), ("name", &json_list(&[name])), ("force_parent", "true")],
        )
        .await
        .map(drop)
    }

    async fn delete(&self, ctx: &OperationContext, abs: &str) -> Result<()> {
        self.remove(ctx, abs, true).await
    }

    /// Deletes `abs`; a folder only when empty unless `recursive`.
    async fn remove(&self, ctx: &OperationContext, abs: &str, recursive: bool) -> Result<()> {
        let inside = format!("{abs}/");
        self.folders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|f| f != abs && !f.starts_with(&inside));
        if abs == "/" || !abs[1..].contains('/') {
            return Err(err(
                ErrorKind::PermissionDenied,
                "a shared folder of the NAS is not deleted through cloudsync",
            ));
        }
        match self
            .call(
                ctx,
                "SYNO.FileStation.Delete",
                "delete",
                &[("path", &json_list(&[abs])), ("recursive", if recursive { "true" } else { "false" })],
            )
            .await
        {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map(drop),
        }
    }

    /// Moves `from` into the folder `to_folder` (keeping its name), replacing a file there, and waits for the
    /// NAS to finish.
    async fn move_into(&self, ctx: &OperationContext, from: &str, to_folder: &str) -> Result<()> {
        let started = self
            .call(
                ctx,
                "SYNO.FileStation.CopyMove",
                "start",
                &[
                    ("path", &json_list(&[from])),
                    ("dest_folder_path", &json_string(to_folder)),
                    ("overwrite", "true"),
                    ("remove_src", "true"),
                ],
            )
            .await?;
        let task = started["taskid"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| err(ErrorKind::Unexpected, "the NAS started a move without a task id"))?
            .to_owned();
        let begun = tokio::time::Instant::now();
        let mut wait = Duration::from_millis(20);
        loop {
            let status =
                self.call(ctx, "SYNO.FileStation.CopyMove", "status", &[("taskid", &json_string(&task))]).await?;
            if status["finished"].as_bool() == Some(true) {
                return Ok(());
            }
            if begun.elapsed() > MOVE_LIMIT {
                return Err(err(ErrorKind::Unexpected, format!("the NAS did not finish moving {from} in an hour")));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }
}

/// An upload under way: where it is staged, and how.
pub(crate) struct Staged {
    abs: String,
    stage: String,
    parent: String,
    name: String,
    /// The name it goes up under (the real one, unless the multipart header cannot carry it).
    sent_as: String,
    size: Option<u64>,
    session: Arc<Session>,
}

impl crate::streamed::Target for Core {
    type State = Staged;

    /// An upload goes to a staging folder in one multipart POST whose file part (the last one, as File Station
    /// requires) is fed as the copy reads the file.
    async fn open(
        &self,
        ctx: &OperationContext,
        path: &str,
        size: Option<u64>,
    ) -> Result<crate::streamed::Opened<Staged>> {
        let abs = self.abs(path);
        let (parent, name) = abs.rsplit_once('/').unwrap_or(("", &abs));
        if parent.is_empty() {
            return Err(err(
                ErrorKind::PermissionDenied,
                format!(
                    "{abs} is not inside a shared folder: files on a Synology NAS live in shared folders, as in \
                     /home/{name}"
                ),
            ));
        }
        // The staging folder is at the top of the file's shared folder (one volume, so the move is a rename):
        // its path, sent raw in the upload, then holds no name of the user's, which could hold a comma (a
        // raw value's separator).
        let share = abs[1..].split('/').next().unwrap_or_default();
        let stage = format!("/{share}/{}", crate::transfer::partial_name());
        self.ensure_folder(ctx, parent).await?;
        self.sweep(ctx, share).await;
        // A name goes in the upload's multipart header as is; one that header cannot carry safely goes up under
        // a plain name and is renamed in the staging folder (Rename takes the name as a JSON value).
        let plain = !name.chars().any(|c| c.is_control() || c == '"' || c == '\\');
        let sent_as = if plain { name } else { "upload" };
        let session = self.session(ctx).await?;
        let (api_path, version) = session.api("SYNO.FileStation.Upload")?;
        let boundary = format!("cloudsync-{}", crate::transfer::partial_name().replace('.', ""));
        let mut head = String::new();
        for (field, value) in [
            ("api", "SYNO.FileStation.Upload"),
            ("version", &version.to_string()),
            ("method", "upload"),
            ("path", &stage),
            ("create_parents", "true"),
            ("overwrite", "true"),
        ] {
            head.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n{value}\r\n"
            ));
        }
        head.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{sent_as}\"\r\nContent-Type: \
             application/octet-stream\r\n\r\n"
        ));
        let tail = format!("\r\n--{boundary}--\r\n");
        let request = session
            .authorize(Request::post(format!("{}/webapi/{api_path}", self.base)))
            .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .body(Buffer::new())
            .map_err(build_error)?;
        let state = Staged {
            stage,
            parent: parent.to_owned(),
            name: name.to_owned(),
            sent_as: sent_as.to_owned(),
            size,
            session: session.clone(),
            abs: abs.clone(),
        };
        Ok(crate::streamed::Opened { request, head: Bytes::from(head), tail: Bytes::from(tail), state })
    }

    async fn finish(
        &self,
        ctx: &OperationContext,
        _: &str,
        staged: Staged,
        answer: http::Response<Buffer>,
    ) -> Result<Metadata> {
        let Staged { abs, stage, parent, name, sent_as, size, session } = staged;
        let placed = async {
            match envelope(answer) {
                Ok(_) => {}
                // The body cannot be sent again from here: it is sent again (from memory, or by the copy) in a
                // new session. 105 is also DSM's plain "no permission": that is not sent again.
                Err(Failure::Session(code)) => {
                    let _ = self.renew(ctx, &session).await;
                    let e = file_station_error(code, "uploading");
                    return Err(if code == 105 { e } else { crate::send_again(e) });
                }
                Err(Failure::Other(e)) if e.is_temporary() => {
                    return Err(crate::send_again(err(e.kind(), e.message())));
                }
                Err(Failure::Other(e)) => return Err(e),
            }
            if sent_as != name {
                self.call(
                    ctx,
                    "SYNO.FileStation.Rename",
                    "rename",
                    &[("path", &json_list(&[&format!("{stage}/{sent_as}")])), ("name", &json_list(&[&name]))],
                )
                .await?;
            }
            self.move_into(ctx, &format!("{stage}/{name}"), &parent).await
        }
        .await;
        if let Err(e) = placed {
            // Nothing reached its place: what was staged is a copy of the source, and goes.
            let _ = self.delete(ctx, &stage).await;
            return Err(e);
        }
        // The NAS said the move is done: it is checked before anything is deleted, and the staging folder is then
        // removed only if empty, so a file that did not move is never deleted with it.
        let staged = format!("{stage}/{name}");
        let [moved_away, arrived] = <[_; 2]>::try_from(self.infos(ctx, &[&staged, &abs]).await?)
            .map_err(|_| err(ErrorKind::Unexpected, "getinfo answered the wrong number of entries"))?;
        match (moved_away, arrived) {
            (None, Some(md)) if md.mode() == EntryMode::FILE && size.is_none_or(|n| md.content_length() == n) => {
                // The file is in place: an empty staging folder that cannot be removed now goes with the
                // next sweep.
                let _ = self.remove(ctx, &stage, false).await;
                Ok(MetadataBuilder::file(md.content_length()).build())
            }
            (Some(_), _) => Err(err(
                ErrorKind::Unexpected,
                format!(
                    "the NAS said it moved the upload into place, but it is still in {stage} (left there); {abs} \
                     was not changed"
                ),
            )),
            (None, _) => Err(err(
                ErrorKind::Unexpected,
                format!("the NAS said it moved the upload into place, but {abs} is not the file sent; copy it again"),
            )),
        }
    }

    async fn abandon(&self, ctx: &OperationContext, staged: Staged) {
        // What arrived in the staging folder goes with it.
        let _ = self.delete(ctx, &staged.stage).await;
    }
}

impl Core {
    async fn download(
        &self,
        ctx: &OperationContext,
        abs: &str,
        range: BytesRange,
    ) -> Result<(Metadata, Box<dyn oio::ReadStreamDyn>)> {
        let mut session = self.session(ctx).await?;
        let mut tries = Tries::default();
        loop {
            let (path, version) = session.api("SYNO.FileStation.Download")?;
            let url = format!(
                "{}/webapi/{path}?{}",
                self.base,
                form(&[
                    ("api", "SYNO.FileStation.Download"),
                    ("version", &version.to_string()),
                    ("method", "download"),
                    ("path", &json_list(&[abs])),
                    ("mode", "download"),
                ])
            );
            let mut req = session.authorize(Request::get(url));
            if !range.is_full() {
                req = req.header(header::RANGE, range.to_header());
            }
            let resp = ctx.http_transport().fetch(req.body(Buffer::new()).map_err(build_error)?).await?;
            let status = resp.status();
            let json = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/"))
                && !resp.headers().contains_key(header::CONTENT_DISPOSITION);
            if (status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT) && !json {
                let length = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
                let md = MetadataBuilder::file(length.or(range.size()).unwrap_or(0)).build();
                if status == StatusCode::OK && !range.is_full() {
                    // The NAS sent the whole file for a byte range: the range is cut out of it here.
                    let stream = Ranged { inner: resp.into_body(), skip: range.offset(), left: range.size() };
                    return Ok((md, Box::new(stream)));
                }
                return Ok((md, Box::new(resp.into_body())));
            }
            let (parts, mut stream) = resp.into_parts();
            // An error answer is read up to the cap, not whole.
            let mut pieces = Vec::new();
            let mut held = 0;
            loop {
                let piece = stream.read().await?;
                if piece.is_empty() || held > MAX_ANSWER {
                    break;
                }
                held += piece.len();
                pieces.extend(piece);
            }
            let buf = Buffer::from(pieces);
            match envelope(http::Response::from_parts(parts, buf)) {
                Err(failure) => tries.again(self, ctx, &mut session, failure).await?,
                Ok(_) => return Err(err(ErrorKind::Unexpected, format!("the NAS answered a download with {status}"))),
            }
        }
    }
}

impl Session {
    fn api(&self, name: &str) -> Result<(&str, u32)> {
        self.apis
            .get(name)
            .map(|(p, v)| (p.as_str(), *v))
            .ok_or_else(|| err(ErrorKind::Unsupported, format!("the NAS does not offer {name}")))
    }

    /// `req` with the session: its id in the `id` cookie and its token (DSM 7's CSRF guard) in `X-SYNO-TOKEN`.
    fn authorize(&self, req: http::request::Builder) -> http::request::Builder {
        let req = req.header(header::COOKIE, format!("id={}", self.sid.as_str()));
        match &self.token {
            Some(t) => req.header("X-SYNO-TOKEN", t.as_str()),
            None => req,
        }
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).unwrap_or_default()
}

/// A string parameter, JSON-encoded as the guide's examples send them (a raw one would be split at commas).
fn json_string(item: &str) -> String {
    serde_json::to_string(item).unwrap_or_default()
}

fn json_list(items: &[&str]) -> String {
    serde_json::to_string(items).unwrap_or_default()
}

fn build_error(e: http::Error) -> opendal::Error {
    err(ErrorKind::Unexpected, "could not build a File Station request").set_source(e)
}

/// The error code an error of ours carries (`DSM error N`).
fn code_of(e: &opendal::Error) -> Option<i64> {
    e.message().split_once("(DSM error ")?.1.split(')').next()?.parse().ok()
}

/// The `data` of a File Station answer, or what went wrong.
fn envelope(resp: http::Response<Buffer>) -> std::result::Result<Value, Failure> {
    let status = resp.status();
    let body = resp.into_body();
    if body.len() > MAX_ANSWER {
        return Err(Failure::Other(err(ErrorKind::Unexpected, "the NAS answered with more than 8 MiB")));
    }
    let parsed: Option<Value> = serde_json::from_slice(&body.to_bytes()).ok();
    let Some(answer) = parsed.filter(Value::is_object) else {
        // Not "not found", whatever the status: a listing would read as empty, a deletion as done.
        let e = err(
            ErrorKind::Unexpected,
            format!("the NAS answered {status} without a File Station answer: is the endpoint the DSM address?"),
        );
        return Err(Failure::Other(if status.is_server_error() { e.set_temporary() } else { e }));
    };
    if answer["success"].as_bool() == Some(true) {
        return Ok(answer.get("data").cloned().unwrap_or(Value::Null));
    }
    let error = &answer["error"];
    // A failed operation on several paths has a general code on top and each path's own in `errors`.
    let code = error["errors"]
        .as_array()
        .and_then(|e| e.first())
        .and_then(|e| e["code"].as_i64())
        .or_else(|| error["code"].as_i64())
        .unwrap_or(100);
    if matches!(code, 105 | 106 | 107 | 119) {
        return Err(Failure::Session(code));
    }
    Err(Failure::Other(file_station_error(code, "")))
}

/// A File Station error code as an OpenDAL error, in words (from the API guide's tables).
fn file_station_error(code: i64, doing: &str) -> opendal::Error {
    use ErrorKind::{AlreadyExists, NotFound, PermissionDenied, Unexpected, Unsupported};
    let (kind, text, temporary) = match code {
        101..=104 => (Unsupported, "the NAS did not understand the request (API, method or version)", false),
        105 => (PermissionDenied, "the user may not do this on the NAS", false),
        106 | 107 | 119 => (PermissionDenied, "the NAS ended the session (timed out or signed out elsewhere)", false),
        400 => (Unexpected, "File Station refused a parameter", false),
        402 | 421 => (Unexpected, "the NAS is busy", true),
        403..=407 => (PermissionDenied, "the user may not do this on the NAS (File Station refused it)", false),
        408 => (NotFound, "no such file or folder", false),
        409 | 410 => (Unsupported, "the NAS cannot do this on that file system", false),
        411 => (PermissionDenied, "the folder is on a read-only file system", false),
        412 | 413 => (Unexpected, "the name is too long for the NAS's file system", false),
        414 => (AlreadyExists, "it already exists", false),
        415 => (Unexpected, "the user's disk quota on the NAS is used up", false),
        416 => (Unexpected, "the NAS has no space left", false),
        417 => (Unexpected, "the NAS had an input/output error", true),
        418..=420 => (Unexpected, "the NAS does not allow this name or path", false),
        1800 => (Unexpected, "the NAS received less of the upload than was sent", true),
        1801 | 1803 => (Unexpected, "the upload was cut off", true),
        1804 => (Unsupported, "the file is too big for the NAS's FAT file system", false),
        1805 => (AlreadyExists, "the file exists and the NAS would not replace it", false),
        900 => (Unexpected, "the NAS could not delete it", false),
        1000 | 1001 => (Unexpected, "the NAS could not move it into place", false),
        1100 | 1101 => (Unexpected, "the NAS could not make the folder", false),
        1200 => (Unexpected, "the NAS could not rename it", false),
        _ => (Unexpected, "File Station failed", false),
    };
    let context = if doing.is_empty() { String::new() } else { format!("{doing}: ") };
    let e = err(kind, format!("{context}{text} (DSM error {code})"));
    if temporary { e.set_temporary() } else { e }
}

/// A sign-in failure in words (SYNO.API.Auth's codes).
fn auth_error(code: i64) -> opendal::Error {
    use ErrorKind::{ConfigInvalid, PermissionDenied};
    let (kind, text) = match code {
        400 => (PermissionDenied, "the NAS refused the user name or password; add the connection again with --replace"),
        401 => (PermissionDenied, "the NAS account is disabled"),
        402 => {
            (PermissionDenied, "the NAS account may not use File Station (DSM: Control Panel > Application Privileges)")
        }
        403 | 406 => (
            ConfigInvalid,
            "the NAS account asks for a 2-step verification code: add the connection again with --replace and \
             --otp-code CODE (the code the account's authenticator app shows now), which enrols this device so \
             that later sign-ins need no code; if it was enrolled, the NAS no longer trusts it (DSM: Personal > \
             Security > Trusted devices)",
        ),
        404 => (
            PermissionDenied,
            "the NAS refused the 2-step verification code (wrong, or expired: codes change every 30 seconds); \
             run the command again with the code shown now",
        ),
        407 => (
            PermissionDenied,
            "the NAS has blocked this address after failed sign-ins (DSM's auto block); an administrator can lift \
             it in Control Panel > Security > Protection",
        ),
        408..=410 => (
            PermissionDenied,
            "the NAS account's password has expired: change it in DSM, then add the connection again",
        ),
        _ => (PermissionDenied, "the NAS refused the sign-in"),
    };
    err(kind, format!("{text} (DSM error {code})"))
}

/// An entry of a listing or of getinfo.
fn metadata(file: &Value) -> Result<Metadata> {
    let extra = &file["additional"];
    let mut md = if file["isdir"].as_bool() == Some(true) {
        MetadataBuilder::dir()
    } else {
        let size = extra["size"].as_u64().ok_or_else(|| {
            err(
                ErrorKind::Unexpected,
                format!("the NAS listed {} without its size", file["path"].as_str().unwrap_or("?")),
            )
        })?;
        MetadataBuilder::file(size)
    };
    if let Some(mtime) = extra["time"]["mtime"].as_i64() {
        md.last_modified(Timestamp::from_second(mtime)?);
    }
    Ok(md.build())
}

impl Service for FileStation {
    type Reader = oio::StreamReader<Reader>;
    type Writer = crate::streamed::StreamWriter<Core>;
    type Lister = oio::PageLister<Lister>;
    type Deleter = oio::OneShotDeleter<Deleter>;
    type Copier = ();
    type Composer = ();

    fn info(&self) -> ServiceInfo {
        ServiceInfo::new(SCHEME, &self.core.root, "")
    }

    fn capability(&self) -> Capability {
        Capability {
            stat: true,
            read: true,
            write: true,
            write_can_empty: true,
            // Written in pieces, one after another, into one request (streamed.rs), told its length (as write
            // metadata).
            write_can_multi: true,
            write_with_user_metadata: true,
            create_dir: true,
            delete: true,
            list: true,
            shared: true,
            ..Default::default()
        }
    }

    async fn create_dir(&self, ctx: &OperationContext, path: &str, _: OpCreateDir) -> Result<RpCreateDir> {
        let abs = self.core.abs(path);
        if abs != "/" {
            self.core.create_folder(ctx, &abs).await?;
        }
        Ok(RpCreateDir::default())
    }

    async fn stat(&self, ctx: &OperationContext, path: &str, _: OpStat) -> Result<RpStat> {
        match self.core.info(ctx, &self.core.abs(path)).await? {
            Some(md) if path.ends_with('/') && md.mode() != EntryMode::DIR => {
                Err(err(ErrorKind::NotFound, "not a folder"))
            }
            Some(md) => Ok(RpStat::new(md)),
            None => Err(err(ErrorKind::NotFound, "no such file or folder (DSM error 408)")),
        }
    }

    fn read(&self, ctx: &OperationContext, path: &str, _: OpRead) -> Result<Self::Reader> {
        Ok(oio::StreamReader::new(Reader { core: self.core.clone(), ctx: ctx.clone(), abs: self.core.abs(path) }))
    }

    fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        Ok(crate::streamed::StreamWriter::new(self.core.clone(), ctx, path, crate::length_of(&args)?))
    }

    fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> {
        Ok(oio::OneShotDeleter::new(Deleter { core: self.core.clone(), ctx: ctx.clone() }))
    }

    fn list(&self, ctx: &OperationContext, path: &str, _: OpList) -> Result<Self::Lister> {
        let (dir, prefix) = crate::folder_and_prefix(path);
        let abs = self.core.abs(if dir.is_empty() { "/" } else { &dir });
        Ok(oio::PageLister::new(Lister { core: self.core.clone(), ctx: ctx.clone(), dir, prefix, abs }))
    }

    fn copy(&self, _: &OperationContext, _: &str, _: &str, _: OpCopy) -> Result<Self::Copier> {
        Err(err(ErrorKind::Unsupported, "server-side copy is not offered for File Station"))
    }

    async fn rename(&self, _: &OperationContext, _: &str, _: &str, _: OpRename) -> Result<RpRename> {
        Err(err(ErrorKind::Unsupported, "rename is not offered for File Station"))
    }

    async fn presign(&self, _: &OperationContext, _: &str, _: OpPresign) -> Result<RpPresign> {
        Err(err(ErrorKind::Unsupported, "presigned addresses are not offered for File Station"))
    }
}

pub(crate) struct Reader {
    core: Arc<Core>,
    ctx: OperationContext,
    abs: String,
}

impl oio::StreamRead for Reader {
    async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        let (md, stream) = self.core.download(&self.ctx, &self.abs, range).await?;
        Ok((RpRead::new(md), stream))
    }
}

/// The bytes of a byte range, cut out of a whole file sent for it.
struct Ranged {
    inner: opendal::HttpBody,
    skip: u64,
    left: Option<u64>,
}

impl oio::ReadStream for Ranged {
    async fn read(&mut self) -> Result<Buffer> {
        loop {
            if self.left == Some(0) {
                return Ok(Buffer::new());
            }
            let mut piece = self.inner.read().await?;
            if piece.is_empty() {
                return Ok(piece);
            }
            let n = piece.len() as u64;
            if self.skip >= n {
                self.skip -= n;
                continue;
            }
            piece = piece.slice(usize::try_from(self.skip).unwrap_or(usize::MAX)..);
            self.skip = 0;
            if let Some(left) = self.left.as_mut() {
                let keep = (piece.len() as u64).min(*left);
                piece = piece.slice(..usize::try_from(keep).unwrap_or(usize::MAX));
                *left -= keep;
            }
            return Ok(piece);
        }
    }
}

pub(crate) struct Deleter {
    core: Arc<Core>,
    ctx: OperationContext,
}

impl oio::OneShotDelete for Deleter {
    async fn delete_once(&self, path: String, _: OpDelete) -> Result<()> {
        self.core.delete(&self.ctx, &self.core.abs(&path)).await
    }
}

pub(crate) struct Lister {
    core: Arc<Core>,
    ctx: OperationContext,
    /// The folder listed, relative to the root (`""` or `a/b/`).
    dir: String,
    /// Only names starting with this.
    prefix: String,
    abs: String,
}

impl oio::PageList for Lister {
    async fn next_page(&self, page: &mut oio::PageContext) -> Result<()> {
        let offset: u64 = page.token.parse().unwrap_or(0);
        let (offset_s, limit_s) = (offset.to_string(), PAGE.to_string());
        let top = self.abs == "/";
        let answer = if top {
            self.core
                .call(
                    &self.ctx,
                    "SYNO.FileStation.List",
                    "list_share",
                    &[("offset", &offset_s), ("limit", &limit_s), ("additional", r#"["time"]"#)],
                )
                .await
        } else {
            self.core
                .call(
                    &self.ctx,
                    "SYNO.FileStation.List",
                    "list",
                    &[
                        ("folder_path", &json_string(&self.abs)),
                        ("offset", &offset_s),
                        ("limit", &limit_s),
                        ("sort_by", "name"),
                        ("additional", r#"["size","time"]"#),
                    ],
                )
                .await
        };
        let data = match answer {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                page.done = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let items = data[if top { "shares" } else { "files" }].as_array().cloned().unwrap_or_default();
        for item in &items {
            let name = item["name"].as_str().unwrap_or_default();
            if name.is_empty() || name.contains('/') || name == "." || name == ".." || !name.starts_with(&self.prefix) {
                continue;
            }
            let md = metadata(item)?;
            let rel = if md.mode() == EntryMode::DIR {
                format!("{}{name}/", self.dir)
            } else {
                format!("{}{name}", self.dir)
            };
            page.entries.push_back(oio::Entry::new(&rel, md));
        }
        let total = data["total"].as_u64().unwrap_or(0);
        let next = offset + items.len() as u64;
        if items.is_empty() || next >= total {
            page.done = true;
        } else {
            page.token = next.to_string();
        }
        Ok(())
    }
}

/// The operator for a File Station connection.
pub(crate) fn operator(settings: Settings) -> opendal::Operator {
    crate::own_operator(FileStation::new(settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooted(root: &str) -> FileStation {
        FileStation::new(Settings {
            base: "https://nas:5001".into(),
            root: root.into(),
            user: "u".into(),
            password: Zeroizing::new("p".into()),
            two_step: TwoStep::default(),
        })
    }

    #[test]
    fn paths_start_at_the_shared_folders() {
        let fs = rooted("/home/sync");
        assert_eq!(fs.core.abs("/"), "/home/sync");
        assert_eq!(fs.core.abs("a/b.txt"), "/home/sync/a/b.txt");
        assert_eq!(fs.core.abs("a/"), "/home/sync/a");
        let top = rooted("/");
        assert_eq!(top.core.abs("/"), "/");
        assert_eq!(top.core.abs("home/"), "/home");
    }

    #[tokio::test]
    async fn a_range_is_cut_out_of_a_whole_file_sent_for_it() {
        for (skip, left, want) in
            [(2, Some(5), "cdefg"), (0, None, "abcdefghi"), (7, None, "hi"), (3, Some(1), "d"), (9, Some(4), "")]
        {
            let pieces: Vec<Result<Buffer>> = ["abc", "defg", "hi"].iter().map(|p| Ok(Buffer::from(*p))).collect();
            let inner = opendal::HttpBody::new(futures_util::stream::iter(pieces), None);
            let mut ranged = Ranged { inner, skip, left };
            let mut got = Vec::new();
            loop {
                let piece = oio::ReadStream::read(&mut ranged).await.expect("read");
                if piece.is_empty() {
                    break;
                }
                got.extend_from_slice(&piece.to_bytes());
            }
            assert_eq!(String::from_utf8(got).expect("utf8"), want, "skip {skip}, left {left:?}");
        }
    }

    #[test]
    fn answers_are_read_with_their_codes() {
        let answer = |body: &str| {
            envelope(http::Response::builder().status(200).body(Buffer::from(body.to_owned())).expect("response"))
        };
        assert_eq!(answer(r#"{"success":true,"data":{"x":1}}"#).ok().expect("data")["x"], 1);
        assert!(matches!(answer(r#"{"success":false,"error":{"code":119}}"#), Err(Failure::Session(119))));
        let Err(Failure::Other(e)) =
            answer(r#"{"success":false,"error":{"code":900,"errors":[{"code":408,"path":"/x"}]}}"#)
        else {
            panic!("an error")
        };
        assert_eq!(e.kind(), ErrorKind::NotFound, "the path's own code counts: {e}");
        assert_eq!(code_of(&e), Some(408));
        let Err(Failure::Other(busy)) = answer(r#"{"success":false,"error":{"code":402}}"#) else { panic!("busy") };
        assert!(busy.is_temporary());
        assert!(auth_error(400).to_string().contains("user name or password"));
        assert!(auth_error(403).to_string().contains("2-step"));
        assert!(matches!(answer("<html>"), Err(Failure::Other(_))));
    }
}
