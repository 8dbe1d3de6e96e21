//! WebDAV uploads that stream, as an OpenDAL layer over OpenDAL's WebDAV service (whose writer holds a whole
//! file in memory and sends it in one request). A file goes in one `PUT` whose body is fed piece by piece as
//! the copy reads it, so memory holds a piece or two whatever the file's size. The copy hands in the file's
//! size (as the write's `cloudsync-length` metadata), which is sent as `Content-Length`: servers behind
//! PHP-FPM (Nextcloud, ownCloud) would store an empty file for a body without one. Without it the body goes
//! chunked.
//!
//! The request goes through the connection's HTTP client (its TLS settings and timeouts) and its pace (one
//! request, pushed back on 429 and 503), with the connection's basic authentication. Folders above the file are
//! made first, through OpenDAL's service.

use std::fmt::{self, Debug};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{StatusCode, header};
use opendal::raw::oio;
use opendal::raw::{Layer, OpCreateDir, OpWrite, Service, Servicer};
use opendal::{Buffer, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::pace::Pace;

type Result<T> = opendal::Result<T>;

/// Pieces queued for the request body.
const QUEUED: usize = 2;

fn err(kind: ErrorKind, message: impl Into<String>) -> opendal::Error {
    opendal::Error::new(kind, message.into())
}

/// What the layer needs.
pub(crate) struct Settings {
    /// The connection's HTTP client, without a read timeout: a streamed request's answer comes only once its
    /// whole body is sent (the copy's steps have timeouts of their own).
    pub client: reqwest::Client,
    /// The endpoint as configured (`https://host/remote.php/dav/files/u`).
    pub endpoint: String,
    /// The connection's root.
    pub root: String,
    /// User and password, for basic authentication.
    pub user: Option<(String, Zeroizing<String>)>,
    pub pace: Option<Pace>,
}

impl Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("root", &self.root)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// The layer: WebDAV's service with streamed uploads.
#[derive(Debug, Clone)]
pub(crate) struct StreamedPut {
    settings: Arc<Settings>,
}

impl StreamedPut {
    pub(crate) fn new(mut settings: Settings) -> Self {
        settings.root = opendal::raw::normalize_root(&settings.root);
        Self { settings: Arc::new(settings) }
    }
}

impl Layer for StreamedPut {
    fn apply_service(&self, inner: Servicer) -> Servicer {
        Arc::new(Streamed { inner, settings: self.settings.clone() })
    }
}

struct Streamed {
    inner: Servicer,
    settings: Arc<Settings>,
}

impl Debug for Streamed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebdavStreamedPut").field("inner", &self.inner).finish()
    }
}

impl Service for Streamed {
    type Writer = PutWriter;

    crate::pass_through!();

    fn capability(&self) -> opendal::Capability {
        // Written in pieces, one after another, into one request.
        opendal::Capability { write_can_multi: true, ..self.inner.capability() }
    }

    fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        let length = crate::length_of(&args)?;
        Ok(PutWriter {
            inner: self.inner.clone(),
            settings: self.settings.clone(),
            ctx: ctx.clone(),
            path: path.to_owned(),
            length,
            open: None,
            failed: None,
        })
    }
}

type Sent = tokio::task::JoinHandle<std::result::Result<reqwest::Response, reqwest::Error>>;

/// One streamed `PUT`.
pub(crate) struct PutWriter {
    inner: Servicer,
    settings: Arc<Settings>,
    ctx: OperationContext,
    path: String,
    length: Option<u64>,
    /// The body's feed and the request under way.
    open: Option<(mpsc::Sender<std::io::Result<Bytes>>, Sent, u64)>,
    /// Once the request has started: set before each step and cleared after it. Found set, a step failed or
    /// was cut off, the body is incomplete, and every later step fails as that one did (a retry of the step
    /// cannot mend it; the copy sends the whole file again).
    failed: Option<Failure>,
}

/// How a step failed, to be told again.
#[derive(Clone)]
struct Failure {
    kind: ErrorKind,
    message: String,
    temporary: bool,
}

impl Failure {
    fn error(&self) -> opendal::Error {
        let e = err(self.kind, self.message.clone());
        if self.temporary { crate::send_again(e) } else { e }
    }
}

impl Drop for PutWriter {
    fn drop(&mut self) {
        // A writer let go mid-upload (the copy failed or was cancelled) gives its request up.
        if let Some((_, sent, _)) = self.open.take() {
            sent.abort();
        }
    }
}

impl PutWriter {
    /// The file's address, formed as OpenDAL's WebDAV service forms it (so a later MOVE names the same one).
    fn url(&self) -> String {
        let abs = opendal::raw::build_rooted_abs_path(&self.settings.root, &self.path);
        format!("{}{}", self.settings.endpoint, opendal::raw::percent_encode_path(&abs))
    }

    async fn start(&mut self) -> Result<()> {
        if self.open.is_some() {
            return Ok(());
        }
        // The folders above the file, up to the connection's root, which may not exist yet either.
        let parent = match self.path.trim_end_matches('/').rsplit_once('/') {
            Some((parent, _)) => format!("{parent}/"),
            None => "/".to_owned(),
        };
        self.inner.create_dir(&self.ctx, &parent, OpCreateDir::default()).await?;
        let epoch = match &self.settings.pace {
            Some(pace) => pace.request().await,
            None => 0,
        };
        let (tx, mut rx) = mpsc::channel::<std::io::Result<Bytes>>(QUEUED);
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut req = self.settings.client.put(self.url()).body(reqwest::Body::wrap_stream(body.boxed()));
        if let Some((user, password)) = &self.settings.user {
            req = req.basic_auth(user, Some(password.as_str()));
        }
        if let Some(n) = self.length {
            req = req.header(header::CONTENT_LENGTH, n);
        }
        self.open = Some((tx, tokio::spawn(req.send()), epoch));
        Ok(())
    }

    fn refuse_after_failure(&self) -> Result<()> {
        match &self.failed {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }

    /// Runs one step of a started upload: a failure is kept and told again by later steps.
    fn note(&mut self, result: Result<()>) -> Result<()> {
        if let Err(e) = &result {
            self.failed =
                Some(Failure { kind: e.kind(), message: e.message().to_owned(), temporary: e.is_temporary() });
        }
        result
    }

    /// The request's outcome, once its body is complete (or the server stopped reading it).
    async fn answer(&mut self) -> Result<()> {
        let Some((tx, sent, epoch)) = self.open.take() else {
            return Err(err(ErrorKind::Unexpected, format!("the upload of {} was not started", self.path)));
        };
        drop(tx);
        let doing = format!("cannot write {}", self.path);
        let resp = match sent.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                // The connection failed: worth sending the file again.
                return Err(crate::send_again(err(
                    ErrorKind::Unexpected,
                    format!("{doing}: {}", crate::oauth::short(e)),
                )));
            }
            Err(e) => return Err(err(ErrorKind::Unexpected, format!("{doing}: {e}"))),
        };
        let status = resp.status();
        let pace = self.settings.pace.as_ref();
        match status {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => {
                if let Some(p) = pace {
                    p.succeeded();
                }
                Ok(())
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                if let Some(p) = pace {
                    p.pushed_back(epoch, None);
                }
                Err(crate::send_again(err(ErrorKind::RateLimited, format!("{doing}: the server answered {status}"))))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(err(ErrorKind::PermissionDenied, format!("{doing}: the server answered {status}")))
            }
            StatusCode::INSUFFICIENT_STORAGE => {
                Err(err(ErrorKind::Unexpected, format!("{doing}: the server is out of space ({status})")))
            }
            // The server's own trouble, or a file locked for a while: worth sending the file again.
            s if s.is_server_error() || s == StatusCode::LOCKED => {
                Err(crate::send_again(err(ErrorKind::Unexpected, format!("{doing}: the server answered {status}"))))
            }
            _ => Err(err(ErrorKind::Unexpected, format!("{doing}: the server answered {status}"))),
        }
    }
}

impl oio::Write for PutWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.refuse_after_failure()?;
        // Starting may fail and be tried again (folders, the pace); once started, a step cut off may not.
        self.start().await?;
        self.failed = Some(Failure {
            kind: ErrorKind::Unexpected,
            message: format!("an earlier write to {} was cut off", self.path),
            temporary: true,
        });
        for piece in bs {
            let (tx, _, _) = self.open.as_ref().expect("started");
            if tx.send(Ok(piece)).await.is_err() {
                // The request ended before its body did: its answer says why.
                let answered = self.answer().await;
                let ended = answered.and_then(|()| {
                    Err(err(ErrorKind::Unexpected, format!("the server ended the upload of {} early", self.path)))
                });
                return self.note(ended);
            }
        }
        self.failed = None;
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.refuse_after_failure()?;
        if self.open.is_none() {
            // Nothing was written: an empty file, of a length known.
            self.length = Some(0);
        }
        self.start().await?;
        self.failed = Some(Failure {
            kind: ErrorKind::Unexpected,
            message: format!("finishing the upload of {} was cut off", self.path),
            temporary: true,
        });
        let answered = self.answer().await;
        self.note(answered)?;
        self.failed = None;
        Ok(MetadataBuilder::unknown().build())
    }

    async fn abort(&mut self) -> Result<()> {
        if let Some((tx, sent, _)) = self.open.take() {
            // An error in the body makes the client give the request up; the caller removes what arrived.
            let _ = tx.try_send(Err(std::io::Error::other("the upload was abandoned")));
            drop(tx);
            sent.abort();
        }
        self.failed = Some(Failure {
            kind: ErrorKind::Unexpected,
            message: format!("the upload of {} was abandoned", self.path),
            temporary: false,
        });
        Ok(())
    }
}
