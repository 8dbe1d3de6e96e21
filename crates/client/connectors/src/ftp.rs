//! FTP and FTPS (explicit TLS) as an OpenDAL service of our own, over suppaftp. OpenDAL's FTP service loses
//! the end of an upload over TLS (it closes the data connection with a TLS session ticket unread, so the kernel
//! resets it and the server drops what it had not read yet), writes its temporary file in the wrong folder,
//! cannot rename, takes the listing of a missing folder on vsftpd (an empty answer) for an empty folder, and
//! trusts only the system's certificate roots. Here:
//!
//! - **Uploads** are closed the way TLS wants: flushed, `close_notify` sent, the server's side read to its end,
//!   and only then the socket let go; the server's `226` must follow. An upload is one `STOR` of the whole file
//!   (the copy writes it under a temporary name and renames it into place with `RNFR`/`RNTO`).
//! - **Downloads** are one `RETR` (after `REST` for a resumed copy), ending with the server's `226`: a
//!   transfer the server calls aborted is an error, not a short file.
//! - **Names** are always sent as absolute paths from the folder the connection starts in (`--root`, else the
//!   folder the server puts the user in, as other FTP clients do), never with a line break (which would be a
//!   second command). Listings use `MLSD` where the server offers it (exact sizes and times in UTC), else
//!   `LIST -a` (hidden files included); a folder is listed after changing into it, so a missing one is told
//!   from an empty one, and a listing stops at [`crate::transfer::MAX_ENTRIES`] entries.
//! - **Data connections** go to the control connection's address whatever the server's `PASV` answer names
//!   (as curl does), so a server cannot send this client to connect elsewhere.
//! - **TLS** 1.2 or 1.3 with the connection's certificate roots (`--ca-cert`, else the system's); the data
//!   connections resume the control connection's TLS session, which servers that require it (vsftpd's
//!   `require_ssl_reuse`) check.

use std::fmt::{self, Debug};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use opendal::raw::oio;
use opendal::raw::{
    OpCopy, OpCreateDir, OpDelete, OpList, OpPresign, OpRead, OpRename, OpStat, OpWrite, RpCreateDir, RpPresign,
    RpRead, RpRename, RpStat, Service, ServiceInfo, Timestamp,
};
use opendal::{Buffer, BytesRange, Capability, EntryMode, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use suppaftp::list::File as Listed;
use suppaftp::tokio::{AsyncDataStream, AsyncRustlsConnector, AsyncRustlsFtpStream, AsyncRustlsStream};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode, Status};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// The scheme the operator reports (FTP and FTPS alike).
pub(crate) const SCHEME: &str = "ftp";
/// Longest wait for the TCP connection, TLS and the sign-in together.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for the server to close its side of an upload's data connection once ours is closed.
const CLOSE_LIMIT: Duration = Duration::from_secs(30);
/// An idle connection older than this is checked with `NOOP` before it is used again.
const FRESH: Duration = Duration::from_secs(15);
/// Idle connections kept for later operations.
const MAX_IDLE: usize = 8;
/// Size of the pieces a file is read in.
const READ_PIECE: usize = 1 << 20;
/// Longest listing line taken.
const MAX_LINE: u64 = 8 << 10;

type Result<T> = opendal::Result<T>;
type Control = AsyncRustlsFtpStream;
type Data = AsyncDataStream<AsyncRustlsStream>;

fn err(kind: ErrorKind, message: impl Into<String>) -> opendal::Error {
    opendal::Error::new(kind, message.into())
}

/// What the service needs.
pub(crate) struct Settings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Zeroizing<String>,
    /// TLS settings for FTPS; `None` for plain FTP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The folder paths start from: absolute, or relative to the folder the server puts the user in (empty:
    /// that folder).
    pub root: String,
}

impl Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("tls", &self.tls.is_some())
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The server's answer to a command, as an error.
fn ftp_error(e: FtpError, doing: &str) -> opendal::Error {
    match e {
        FtpError::UnexpectedResponse(r) => {
            let code = r.status.code();
            let text: String =
                String::from_utf8_lossy(&r.body).trim().chars().filter(|c| !c.is_control()).take(200).collect();
            let kind = match code {
                530 => ErrorKind::PermissionDenied,
                550 => ErrorKind::NotFound,
                553 | 552 | 532 => ErrorKind::PermissionDenied,
                _ => ErrorKind::Unexpected,
            };
            let e = err(kind, format!("{doing}: the server answered {text}"));
            // Busy, or a data connection that failed: worth another try.
            if matches!(code, 421 | 425 | 426 | 450 | 451 | 452) { e.set_temporary() } else { e }
        }
        FtpError::ConnectionError(io) => err(ErrorKind::Unexpected, format!("{doing}: {io}")).set_temporary(),
        FtpError::SecureError(text) => err(ErrorKind::Unexpected, format!("{doing}: TLS failed: {text}")),
        other => err(ErrorKind::Unexpected, format!("{doing}: {other}")),
    }
}

fn status_of(e: &FtpError) -> Option<u32> {
    match e {
        FtpError::UnexpectedResponse(r) => Some(r.status.code()),
        _ => None,
    }
}

/// A path the server can be given: no line break (a second command) and no NUL.
fn sendable(path: &str) -> Result<()> {
    if path.contains(['\r', '\n', '\0']) {
        return Err(err(
            ErrorKind::Unsupported,
            format!("{}: a name with a line break cannot be sent over FTP", path.escape_debug()),
        ));
    }
    Ok(())
}

struct Core {
    settings: Settings,
    idle: std::sync::Mutex<Vec<(Instant, Control)>>,
    /// The absolute folder paths start from, known from the first sign-in.
    base: OnceLock<String>,
    /// Whether the server lists with `MLSD`.
    mlsd: OnceLock<bool>,
}

impl Core {
    async fn connect(&self) -> Result<Control> {
        let s = &self.settings;
        let host = s.host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let doing = format!("cannot connect to {}:{}", s.host, s.port);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), s.port))
            .await
            .map_err(|e| err(ErrorKind::Unexpected, format!("{doing}: {e}")).set_temporary())?;
        let ipv6 = tcp.peer_addr().is_ok_and(|a| a.is_ipv6());
        let mut c = Control::connect_with_stream(tcp).await.map_err(|e| ftp_error(e, &doing))?;
        if let Some(tls) = &s.tls {
            // Each control connection keeps the TLS sessions of its own: its data connections resume those, and
            // a server that checks reuse (vsftpd, one process per control connection) knows no other's.
            let mut own = (**tls).clone();
            own.resumption = rustls::client::Resumption::in_memory_sessions(32);
            let connector = AsyncRustlsConnector::from(suppaftp::tokio_rustls::TlsConnector::from(Arc::new(own)));
            c = c.into_secure(connector, &host).await.map_err(|e| ftp_error(e, &doing))?;
        }
        match c.login(s.user.as_str(), s.password.as_str()).await {
            Ok(()) => {}
            Err(e) if status_of(&e) == Some(530) => {
                return Err(err(
                    ErrorKind::PermissionDenied,
                    format!("{}:{} refused the user name {:?} or its password", s.host, s.port, s.user),
                ));
            }
            Err(e) => return Err(ftp_error(e, &doing)),
        }
        c.transfer_type(FileType::Binary).await.map_err(|e| ftp_error(e, &doing))?;
        c.set_mode(if ipv6 { Mode::ExtendedPassive } else { Mode::Passive });
        c.set_passive_nat_workaround(true);
        if self.base.get().is_none() {
            let base = if s.root.starts_with('/') {
                s.root.clone()
            } else {
                let home = c.pwd().await.map_err(|e| ftp_error(e, &doing))?;
                let home = if home.starts_with('/') { home } else { "/".to_owned() };
                format!("{}/{}", home.trim_end_matches('/'), s.root.trim_matches('/'))
            };
            let _ = self.base.set(base.trim_end_matches('/').to_owned());
        }
        if self.mlsd.get().is_none() {
            let offered = c.feat().await.is_ok_and(|f| f.keys().any(|k| k.eq_ignore_ascii_case("MLST")));
            let _ = self.mlsd.set(offered);
        }
        Ok(c)
    }

    /// A signed-in connection: an idle one (checked if it waited long), else a new one.
    async fn conn(&self) -> Result<Control> {
        loop {
            let popped = self.idle.lock().map_or(None, |mut idle| idle.pop());
            let Some((since, mut c)) = popped else { break };
            if since.elapsed() < FRESH || c.noop().await.is_ok() {
                return Ok(c);
            }
        }
        tokio::time::timeout(CONNECT_LIMIT, self.connect()).await.map_err(|_| {
            err(ErrorKind::Unexpected, format!("{}:{} did not answer in time", self.settings.host, self.settings.port))
                .set_temporary()
        })?
    }

    /// Keeps a connection whose last exchange ended cleanly for later.
    fn put_back(&self, c: Control) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push((Instant::now(), c));
        }
    }

    /// The absolute path of `path` (relative to the root).
    fn abs(&self, path: &str) -> Result<String> {
        sendable(path)?;
        let base = self.base.get().map_or("", String::as_str);
        Ok(format!("{base}/{}", path.trim_start_matches('/')))
    }

    /// Whether `abs` is a folder (by changing into it).
    async fn is_dir(c: &mut Control, abs: &str) -> Result<bool> {
        let target = if abs.is_empty() { "/" } else { abs };
        match c.cwd(target).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(550) => Ok(false),
            Err(e) => Err(ftp_error(e, &format!("cannot read {abs}"))),
        }
    }

    /// A file's size and time, `None` when there is no such file (a folder included).
    async fn file_stat(c: &mut Control, abs: &str) -> Result<Option<Metadata>> {
        let size = match c.size(abs).await {
            Ok(n) => n as u64,
            Err(e) if status_of(&e) == Some(550) => return Ok(None),
            Err(e) => return Err(ftp_error(e, &format!("cannot read {abs}"))),
        };
        let mut md = MetadataBuilder::file(size);
        match c.mdtm(abs).await {
            Ok(t) => {
                md.last_modified(Timestamp::from_second(t.and_utc().timestamp())?);
            }
            // A server that gives no time (or one this client cannot read): the file has none.
            Err(FtpError::UnexpectedResponse(_) | FtpError::BadResponse) => {}
            // The connection failed: not to be used again.
            Err(e) => return Err(ftp_error(e, &format!("cannot read {abs}"))),
        }
        Ok(Some(md.build()))
    }

    /// Makes the folder `abs` and those above it.
    async fn make_dirs(&self, c: &mut Control, abs: &str) -> Result<()> {
        let base = self.base.get().map_or("", String::as_str);
        if abs.len() <= base.len() || Self::is_dir(c, abs).await? {
            return Ok(());
        }
        let mut at = base.to_owned();
        for part in abs[base.len()..].split('/').filter(|p| !p.is_empty()) {
            at = format!("{at}/{part}");
            // An answer of 550 may mean "exists already": what counts is whether it is there after.
            if let Err(e) = c.mkdir(&at).await
                && !Self::is_dir(c, &at).await?
            {
                let why = ftp_error(e, &format!("cannot make the folder {at}"));
                return Err(err(
                    ErrorKind::PermissionDenied,
                    format!("{}; check the user's rights there, or --root", why.message()),
                ));
            }
        }
        Ok(())
    }

    /// The entries of the folder `dir` (relative to the root), with its absolute path; `None` when it does not
    /// exist.
    async fn list(&self, dir: &str) -> Result<Option<(String, Vec<Listed>)>> {
        let mut c = self.conn().await?;
        let abs = self.abs(dir)?;
        let abs = abs.trim_end_matches('/');
        let doing = format!("cannot list {abs}");
        if !Self::is_dir(&mut c, abs).await? {
            self.put_back(c);
            return Ok(None);
        }
        let abs = abs.to_owned();
        let mlsd = self.mlsd.get().copied().unwrap_or(false);
        let command = if mlsd { "MLSD" } else { "LIST -a" };
        let (_, data) = c
            .custom_data_command(command, &[Status::AboutToSend, Status::AlreadyOpen])
            .await
            .map_err(|e| ftp_error(e, &doing))?;
        let mut reader = tokio::io::BufReader::new(data);
        let mut found = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line).await {
                Ok(n) => n,
                // A listing over TLS must end with TLS's goodbye: one cut off could look complete (and a mirror
                // would delete what it left out).
                Err(e) => return Err(err(ErrorKind::Unexpected, format!("{doing}: {e}")).set_temporary()),
            };
            if n == 0 {
                break;
            }
            if found.len() >= crate::transfer::MAX_ENTRIES {
                return Err(err(
                    ErrorKind::Unexpected,
                    format!("{doing}: it holds over {} entries", crate::transfer::MAX_ENTRIES),
                ));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            if text.is_empty() || (mlsd && is_this_or_parent(text)) {
                continue;
            }
            let parsed = if mlsd { suppaftp::list::ListParser::parse_mlsd(text) } else { text.parse::<Listed>() };
            // Lines that are not entries ("total 12") are left out.
            if let Ok(entry) = parsed {
                found.push(entry);
            }
        }
        c.close_data_connection(reader.into_inner()).await.map_err(|e| ftp_error(e, &doing))?;
        self.put_back(c);
        Ok(Some((abs, found)))
    }
}

/// Which step of a rename the server refused.
enum Step {
    From,
    To,
}

/// `RNFR` then `RNTO`, telling which one was refused.
async fn rename_once(c: &mut Control, from: &str, to: &str) -> std::result::Result<(), (Step, FtpError)> {
    c.custom_command(format!("RNFR {from}"), &[Status::RequestFilePending]).await.map_err(|e| (Step::From, e))?;
    // Some servers answer 200 instead of 250.
    c.custom_command(format!("RNTO {to}"), &[Status::RequestedFileActionOk, Status::CommandOk])
        .await
        .map(drop)
        .map_err(|e| (Step::To, e))
}

/// An `MLSD` line for the folder itself or its parent.
fn is_this_or_parent(line: &str) -> bool {
    let facts = line.split_once(' ').map_or("", |(f, _)| f).to_ascii_lowercase();
    facts.split(';').any(|f| f == "type=cdir" || f == "type=pdir")
}

pub(crate) struct Ftp {
    core: Arc<Core>,
}

impl Debug for Ftp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ftp").field("settings", &self.core.settings).finish()
    }
}

impl Service for Ftp {
    type Reader = oio::StreamReader<Reader>;
    type Writer = Writer;
    type Lister = oio::PageLister<Lister>;
    type Deleter = oio::OneShotDeleter<Deleter>;
    type Copier = ();
    type Composer = ();

    fn info(&self) -> ServiceInfo {
        ServiceInfo::new(SCHEME, &self.core.settings.root, "")
    }

    fn capability(&self) -> Capability {
        Capability {
            stat: true,
            read: true,
            write: true,
            write_can_multi: true,
            write_can_empty: true,
            create_dir: true,
            delete: true,
            list: true,
            rename: true,
            shared: true,
            ..Default::default()
        }
    }

    async fn create_dir(&self, _: &OperationContext, path: &str, _: OpCreateDir) -> Result<RpCreateDir> {
        let mut c = self.core.conn().await?;
        let abs = self.core.abs(path)?;
        self.core.make_dirs(&mut c, abs.trim_end_matches('/')).await?;
        self.core.put_back(c);
        Ok(RpCreateDir::default())
    }

    async fn stat(&self, _: &OperationContext, path: &str, _: OpStat) -> Result<RpStat> {
        let mut c = self.core.conn().await?;
        let abs = self.core.abs(path)?;
        let trimmed = abs.trim_end_matches('/');
        let found = if path.trim_matches('/').is_empty() {
            Some(MetadataBuilder::dir().build())
        } else if !path.ends_with('/')
            && let Some(md) = Core::file_stat(&mut c, trimmed).await?
        {
            Some(md)
        } else if Core::is_dir(&mut c, trimmed).await? {
            Some(MetadataBuilder::dir().build())
        } else {
            None
        };
        self.core.put_back(c);
        found.map(RpStat::new).ok_or_else(|| err(ErrorKind::NotFound, format!("no such file or folder: {abs}")))
    }

    fn read(&self, _: &OperationContext, path: &str, _: OpRead) -> Result<Self::Reader> {
        sendable(path)?;
        Ok(oio::StreamReader::new(Reader { core: self.core.clone(), path: path.to_owned() }))
    }

    fn write(&self, _: &OperationContext, path: &str, _: OpWrite) -> Result<Self::Writer> {
        sendable(path)?;
        Ok(Writer { core: self.core.clone(), path: path.to_owned(), open: None, failed: false })
    }

    fn delete(&self, _: &OperationContext) -> Result<Self::Deleter> {
        Ok(oio::OneShotDeleter::new(Deleter { core: self.core.clone() }))
    }

    fn list(&self, _: &OperationContext, path: &str, _: OpList) -> Result<Self::Lister> {
        sendable(path)?;
        let (dir, prefix) = crate::folder_and_prefix(path);
        Ok(oio::PageLister::new(Lister { core: self.core.clone(), dir, prefix }))
    }

    fn copy(&self, _: &OperationContext, _: &str, _: &str, _: OpCopy) -> Result<Self::Copier> {
        Err(err(ErrorKind::Unsupported, "server-side copy is not offered over FTP"))
    }

    async fn rename(&self, _: &OperationContext, from: &str, to: &str, _: OpRename) -> Result<RpRename> {
        let mut c = self.core.conn().await?;
        let (from, to) = (self.core.abs(from)?, self.core.abs(to)?);
        let doing = format!("cannot rename {from} to {to}");
        if let Some((parent, _)) = to.rsplit_once('/') {
            self.core.make_dirs(&mut c, parent).await?;
        }
        match rename_once(&mut c, &from, &to).await {
            Ok(()) => {}
            // A server that will not rename over a file (not a POSIX one): the old file is set aside, the new
            // one put in its place, and the old one removed, or put back if that fails.
            Err((Step::To, e)) if matches!(status_of(&e), Some(550 | 553)) => {
                if Core::file_stat(&mut c, &to).await?.is_none() {
                    return Err(ftp_error(e, &doing));
                }
                let dir = to.rsplit_once('/').map_or("", |(d, _)| d);
                let aside = format!("{dir}/{}", crate::transfer::partial_name());
                rename_once(&mut c, &to, &aside).await.map_err(|(_, e)| ftp_error(e, &doing))?;
                if let Err((_, e)) = rename_once(&mut c, &from, &to).await {
                    let _ = rename_once(&mut c, &aside, &to).await;
                    return Err(ftp_error(e, &doing));
                }
                let _ = c.rm(&aside).await;
            }
            // The file to rename is not there (or an answer was lost and it was renamed already): nothing is
            // deleted.
            Err((_, e)) => return Err(ftp_error(e, &doing)),
        }
        self.core.put_back(c);
        Ok(RpRename::default())
    }

    async fn presign(&self, _: &OperationContext, _: &str, _: OpPresign) -> Result<RpPresign> {
        Err(err(ErrorKind::Unsupported, "presigned addresses are not offered over FTP"))
    }
}

pub(crate) struct Reader {
    core: Arc<Core>,
    path: String,
}

impl oio::StreamRead for Reader {
    async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        let mut c = self.core.conn().await?;
        let abs = self.core.abs(&self.path)?;
        let doing = format!("cannot read {abs}");
        let Some(md) = Core::file_stat(&mut c, &abs).await? else {
            self.core.put_back(c);
            return Err(err(ErrorKind::NotFound, format!("no such file: {abs}")));
        };
        if range.offset() > 0 {
            let at = usize::try_from(range.offset()).map_err(|_| err(ErrorKind::Unexpected, "offset too large"))?;
            c.resume_transfer(at).await.map_err(|e| match status_of(&e) {
                // A server that does not take REST: the file can only be read from its start.
                Some(code) if code >= 500 => {
                    err(ErrorKind::Unsupported, format!("{doing}: the server cannot start a transfer midway (REST)"))
                }
                _ => ftp_error(e, &doing),
            })?;
        }
        let data = c.retr_as_stream(&abs).await.map_err(|e| ftp_error(e, &doing))?;
        let left = range.size().unwrap_or(u64::MAX);
        let stream = Download { core: self.core.clone(), conn: Some(c), data: Some(data), left, doing };
        Ok((RpRead::new(md), Box::new(stream)))
    }
}

/// A file's bytes as the server sends them, up to the end of the range read.
struct Download {
    core: Arc<Core>,
    conn: Option<Control>,
    data: Option<Data>,
    left: u64,
    doing: String,
}

impl oio::ReadStream for Download {
    async fn read(&mut self) -> Result<Buffer> {
        let Some(data) = self.data.as_mut() else { return Ok(Buffer::new()) };
        if self.left == 0 {
            // The range ends before the file: the transfer is left unfinished, with its connection.
            self.data = None;
            self.conn = None;
            return Ok(Buffer::new());
        }
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(READ_PIECE);
        let mut buf = BytesMut::zeroed(want);
        let mut got = 0;
        while got < want {
            let n = match data.read(&mut buf[got..]).await {
                Ok(n) => n,
                // A TLS data connection closed without TLS's goodbye: the server's 226 tells whether it was whole.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => {
                    self.data = None;
                    self.conn = None;
                    return Err(err(ErrorKind::Unexpected, format!("{}: {e}", self.doing)).set_temporary());
                }
            };
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        if got == 0 {
            // The end: the server must say the transfer was complete.
            let (Some(data), Some(mut c)) = (self.data.take(), self.conn.take()) else { return Ok(Buffer::new()) };
            c.finalize_retr_stream(data).await.map_err(|e| ftp_error(e, &self.doing))?;
            self.core.put_back(c);
            return Ok(Buffer::new());
        }
        self.left -= got as u64;
        Ok(Buffer::from(buf.freeze()))
    }
}

/// Writes a file with one `STOR`; the folders above it are made first.
pub(crate) struct Writer {
    core: Arc<Core>,
    /// Relative to the root.
    path: String,
    open: Option<(Control, Data)>,
    /// Set before each step and cleared after it: found set, a step failed or was cut off, and nothing more is
    /// written through this writer.
    failed: bool,
}

impl Writer {
    async fn data(&mut self) -> Result<&mut Data> {
        if self.open.is_none() {
            let mut c = self.core.conn().await?;
            let abs = self.core.abs(&self.path)?;
            let doing = format!("cannot write {abs}");
            if let Some((parent, _)) = abs.rsplit_once('/') {
                self.core.make_dirs(&mut c, parent).await?;
            }
            let data = c.put_with_stream(&abs).await.map_err(|e| {
                let e = ftp_error(e, &doing);
                // A refused STOR is not a missing file.
                if e.kind() == ErrorKind::NotFound {
                    err(ErrorKind::PermissionDenied, e.message().to_owned())
                } else {
                    e
                }
            })?;
            self.open = Some((c, data));
        }
        Ok(&mut self.open.as_mut().expect("opened above").1)
    }

    fn refuse_after_failure(&self) -> Result<()> {
        if self.failed {
            return Err(err(ErrorKind::Unexpected, format!("an earlier write to {} failed", self.path)));
        }
        Ok(())
    }
}

impl oio::Write for Writer {
    async fn write(&mut self, mut bs: Buffer) -> Result<()> {
        self.refuse_after_failure()?;
        // Opening may fail and be tried again (a busy server); a write cut off may not.
        self.data().await?;
        self.failed = true;
        let doing = format!("cannot write {}", self.path);
        let data = &mut self.open.as_mut().expect("opened above").1;
        while bs.has_remaining() {
            let piece = bs.chunk();
            data.write_all(piece).await.map_err(|e| err(ErrorKind::Unexpected, format!("{doing}: {e}")))?;
            let n = piece.len();
            bs.advance(n);
        }
        self.failed = false;
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.refuse_after_failure()?;
        self.data().await?;
        self.failed = true;
        let doing = format!("cannot finish writing {}", self.path);
        let (mut c, mut data) = self.open.take().expect("opened above");
        let io = |e: std::io::Error| err(ErrorKind::Unexpected, format!("{doing}: {e}")).set_temporary();
        data.flush().await.map_err(io)?;
        // TLS's goodbye and the end of our side; then the server's side is read to its end (TLS 1.3 servers
        // send session tickets there), so that closing the socket does not reset it under bytes the server has
        // not read yet.
        data.shutdown().await.map_err(io)?;
        let mut rest = [0u8; 4096];
        let _ = tokio::time::timeout(CLOSE_LIMIT, async {
            while let Ok(n) = data.read(&mut rest).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        drop(data);
        c.finalize_put_stream(tokio::io::sink()).await.map_err(|e| ftp_error(e, &doing))?;
        self.core.put_back(c);
        self.failed = false;
        Ok(MetadataBuilder::unknown().build())
    }

    async fn abort(&mut self) -> Result<()> {
        // The caller removes what was written; the transfer is let go with its connection.
        self.failed = true;
        self.open = None;
        Ok(())
    }
}

pub(crate) struct Deleter {
    core: Arc<Core>,
}

impl oio::OneShotDelete for Deleter {
    async fn delete_once(&self, path: String, _: OpDelete) -> Result<()> {
        sendable(&path)?;
        let mut c = self.core.conn().await?;
        let abs = self.core.abs(&path)?;
        let trimmed = abs.trim_end_matches('/');
        let doing = format!("cannot delete {abs}");
        let result = if path.ends_with('/') { c.rmdir(trimmed).await } else { c.rm(trimmed).await };
        match result {
            Ok(()) => {}
            // Deleting what is not there succeeds; anything else that answered 550 is refused.
            Err(e) if status_of(&e) == Some(550) => {
                let there = if path.ends_with('/') {
                    Core::is_dir(&mut c, trimmed).await?
                } else {
                    Core::file_stat(&mut c, trimmed).await?.is_some()
                };
                if there {
                    return Err(err(ErrorKind::PermissionDenied, ftp_error(e, &doing).message().to_owned()));
                }
            }
            Err(e) => return Err(ftp_error(e, &doing)),
        }
        self.core.put_back(c);
        Ok(())
    }
}

pub(crate) struct Lister {
    core: Arc<Core>,
    /// The folder listed, relative to the root (`""` or `a/b/`).
    dir: String,
    /// Only names starting with this.
    prefix: String,
}

impl oio::PageList for Lister {
    async fn next_page(&self, page: &mut oio::PageContext) -> Result<()> {
        page.done = true;
        let Some((folder, found)) = self.core.list(&self.dir).await? else { return Ok(()) };
        for f in found {
            let n = f.name();
            if n.is_empty() || n.contains('/') || n == "." || n == ".." || !n.starts_with(&self.prefix) {
                continue;
            }
            let md = if f.is_directory() {
                MetadataBuilder::dir().build()
            } else if f.is_symlink() {
                // A link to a file is listed as the file; a link to a folder is not followed (it may loop).
                let mut c = self.core.conn().await?;
                let md = Core::file_stat(&mut c, &format!("{folder}/{n}")).await?;
                self.core.put_back(c);
                match md {
                    Some(md) => md,
                    None => continue,
                }
            } else {
                let mut md = MetadataBuilder::file(f.size() as u64);
                if let Ok(d) = f.modified().duration_since(std::time::UNIX_EPOCH)
                    && let Ok(secs) = i64::try_from(d.as_secs())
                {
                    md.last_modified(Timestamp::from_second(secs)?);
                }
                md.build()
            };
            let rel =
                if md.mode() == EntryMode::DIR { format!("{}{n}/", self.dir) } else { format!("{}{n}", self.dir) };
            page.entries.push_back(oio::Entry::new(&rel, md));
        }
        Ok(())
    }
}

/// The operator for an FTP or FTPS connection.
pub(crate) fn operator(settings: Settings) -> opendal::Operator {
    crate::own_operator(Ftp {
        core: Arc::new(Core {
            settings,
            idle: std::sync::Mutex::default(),
            base: OnceLock::new(),
            mlsd: OnceLock::new(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_a_line_break_is_never_sent() {
        assert!(sendable("a/b c.txt").is_ok());
        for bad in ["a\r\nDELE x", "a\nb", "a\0b"] {
            assert_eq!(sendable(bad).expect_err(bad).kind(), ErrorKind::Unsupported);
        }
    }

    #[test]
    fn listing_lines_for_the_folder_itself_are_told_apart() {
        assert!(is_this_or_parent("type=cdir;modify=20260101000000; /home/u"));
        assert!(is_this_or_parent("Type=pdir;perm=el; .."));
        assert!(!is_this_or_parent("type=file;size=3;modify=20260101000000; cdir.txt"));
        let parsed = suppaftp::list::ListParser::parse_mlsd("type=file;size=3;modify=20260102030405; notes.txt")
            .expect("mlsd line");
        assert_eq!((parsed.name(), parsed.size(), parsed.is_file()), ("notes.txt", 3, true));
        let parsed: Listed = "-rw-r--r--    1 1000     1000         7 Nov 24 18:47 .hidden".parse().expect("LIST line");
        assert_eq!((parsed.name(), parsed.size()), (".hidden", 7));
    }

    #[test]
    fn answers_map_to_what_a_copy_can_act_on() {
        let answer = |code: u32, text: &str| {
            FtpError::UnexpectedResponse(suppaftp::types::Response::new(Status::from(code), text.as_bytes().to_vec()))
        };
        let e = ftp_error(answer(550, "550 No such file.\r\n"), "cannot read /x");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.message().contains("No such file"), "{e}");
        assert!(ftp_error(answer(426, "426 Failure reading network stream."), "x").is_temporary());
        assert_eq!(ftp_error(answer(553, "553 Could not create file."), "x").kind(), ErrorKind::PermissionDenied);
        assert!(!ftp_error(answer(553, "553 Could not create file."), "x").is_temporary());
        let shown = format!(
            "{:?}",
            Settings {
                host: "h".into(),
                port: 21,
                user: "u".into(),
                password: Zeroizing::new("hunter2".into()),
                tls: None,
                root: String::new(),
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
