//! Uploads in one HTTP request whose body is fed as the copy reads the file (WebDAV's `PUT`, pCloud's
//! `uploadfile`, File Station's multipart upload), so memory holds a piece or two whatever the file's size.
//!
//! The request goes through the connection's HTTP transport, so the run's pace and the connection's sign-in
//! apply to it as to any other request. OpenDAL's requests carry their whole body in a buffer; a streamed one
//! carries an empty buffer and its feed in an extension ([`StreamedBody`]), which the innermost transport
//! ([`StreamingTransport`]) sends. That transport's client has no read timeout: the answer to such a request
//! comes only once its whole body is sent (the copy's steps have timeouts of their own).
//!
//! The copy hands in the file's size (as the write's `cloudsync-length` metadata), which is sent as
//! `Content-Length`: servers behind PHP-FPM (Nextcloud, ownCloud) store an empty file for a body without one,
//! and the server can tell a body that broke off from a whole one.
//!
//! A streamed request cannot be taken up where it broke off. A failure that may pass is marked for the copy to
//! send the whole file again (`crate::send_again`); a small file, kept while it is sent, is sent again here.

use std::fmt::{self, Debug};
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header;
use opendal::raw::oio;
use opendal::{Buffer, ErrorKind, HttpBody, HttpTransport, Metadata, OperationContext};
use tokio::sync::mpsc;

type Result<T> = opendal::Result<T>;

/// Pieces queued for the request body.
const QUEUED: usize = 2;
/// Longest answer read to a streamed upload.
const MAX_ANSWER: usize = 8 << 20;
/// A file up to this size (one piece of a copy) is kept while it is sent, and sent again from memory when the
/// remote refused it for a reason that may pass (a session ended, the server busy), up to [`REPLAYS`] times.
const REPLAY_MAX: u64 = 8 << 20;
const REPLAYS: u32 = 4;

pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> opendal::Error {
    opendal::Error::new(kind, message.into())
}

type Feed = mpsc::Receiver<std::io::Result<Bytes>>;

/// A request's body fed piece by piece, in the request's extensions (its buffer stays empty), with its length
/// when known. It can be sent once.
#[derive(Clone)]
pub(crate) struct StreamedBody {
    feed: Arc<Mutex<Option<Feed>>>,
    length: Option<u64>,
}

impl StreamedBody {
    /// The body's length, if known.
    pub(crate) fn length(&self) -> Option<u64> {
        self.length
    }
}

/// The innermost HTTP transport of a connection: requests go through reqwest as OpenDAL sends them, except
/// those with a [`StreamedBody`], whose body is fed as it comes, through a client without a read timeout.
pub(crate) struct StreamingTransport {
    inner: opendal_http_transport_reqwest::ReqwestTransport,
    unhurried: reqwest::Client,
}

impl StreamingTransport {
    /// `client` for everything, `unhurried` (the same settings without a read timeout) for streamed bodies.
    pub(crate) fn new(client: reqwest::Client, unhurried: reqwest::Client) -> Self {
        Self { inner: opendal_http_transport_reqwest::ReqwestTransport::new(client), unhurried }
    }
}

impl HttpTransport for StreamingTransport {
    async fn fetch(&self, req: http::Request<Buffer>) -> Result<http::Response<HttpBody>> {
        let Some(body) = req.extensions().get::<StreamedBody>().cloned() else {
            return self.inner.fetch(req).await;
        };
        let feed = body.feed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let Some(mut feed) = feed else {
            return Err(crate::send_again(err(ErrorKind::Unexpected, "a streamed upload cannot be sent twice")));
        };
        let (parts, _) = req.into_parts();
        let stream = futures_util::stream::poll_fn(move |cx| feed.poll_recv(cx));
        let mut builder = self
            .unhurried
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(reqwest::Body::wrap_stream(stream.boxed()));
        if let Some(n) = body.length {
            builder = builder.header(header::CONTENT_LENGTH, n);
        }
        let mut resp = builder.send().await.map_err(|e| {
            // The connection failed: worth sending the file again.
            crate::send_again(err(ErrorKind::Unexpected, crate::oauth::short(e)))
        })?;
        let mut answer = http::Response::builder().status(resp.status()).version(resp.version());
        if let Some(h) = answer.headers_mut() {
            std::mem::swap(h, resp.headers_mut());
        }
        let mut read = Vec::new();
        let mut held = 0;
        loop {
            match resp.chunk().await {
                Ok(Some(piece)) => {
                    held += piece.len();
                    if held > MAX_ANSWER {
                        return Err(err(ErrorKind::Unexpected, "the answer to an upload was over 8 MiB"));
                    }
                    read.push(piece);
                }
                Ok(None) => break,
                Err(e) => return Err(crate::send_again(err(ErrorKind::Unexpected, crate::oauth::short(e)))),
            }
        }
        let body = Buffer::from(read);
        let size = body.len() as u64;
        answer
            .body(HttpBody::new(futures_util::stream::iter([Ok(body)]), Some(size)))
            .map_err(|e| err(ErrorKind::Unexpected, format!("cannot read the answer to an upload: {e}")))
    }
}

/// A request under way: what it leaves to be done, and its answer to come.
pub(crate) struct Opened<S> {
    /// The request, without its body (its buffer is ignored).
    pub request: http::Request<Buffer>,
    /// Sent before the file and after it (a multipart form's framing).
    pub head: Bytes,
    pub tail: Bytes,
    /// Carried to `finish` or `abandon`.
    pub state: S,
}

/// One kind of remote's streamed upload.
pub(crate) trait Target: Send + Sync + 'static {
    /// What an upload carries from its start to its end (a staging folder, ...).
    type State: Send + Sync + Unpin + 'static;

    /// Gets the remote ready for the file at `path` (folders, a session) and makes its request. May fail and be
    /// tried again.
    fn open(
        &self,
        ctx: &OperationContext,
        path: &str,
        length: Option<u64>,
    ) -> impl Future<Output = Result<Opened<Self::State>>> + Send;

    /// Reads the answer to a request whose body was sent whole, and completes the upload.
    fn finish(
        &self,
        ctx: &OperationContext,
        path: &str,
        state: Self::State,
        answer: http::Response<Buffer>,
    ) -> impl Future<Output = Result<Metadata>> + Send;

    /// Removes what an upload that failed before its answer left behind.
    fn abandon(&self, ctx: &OperationContext, state: Self::State) -> impl Future<Output = ()> + Send;
}

type Sent = tokio::task::JoinHandle<Result<http::Response<Buffer>>>;

struct Open<S> {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    sent: Sent,
    tail: Bytes,
    state: S,
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

/// An upload of one file in one streamed request.
pub(crate) struct StreamWriter<T: Target> {
    target: Arc<T>,
    ctx: OperationContext,
    path: String,
    length: Option<u64>,
    open: Option<Open<T::State>>,
    /// The file as sent so far, while it is small enough to be sent again from memory.
    kept: Option<Vec<Bytes>>,
    kept_len: u64,
    /// The request ended before the body did, and the file is kept: the answer is read at `close`.
    ended_early: bool,
    /// Once the request has started: set before each step and cleared after it. Found set, a step failed or
    /// was cut off, the body is incomplete, and every later step fails as that one did (a retry of the step
    /// cannot mend it; the copy sends the whole file again).
    failed: Option<Failure>,
}

impl<T: Target> Debug for StreamWriter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWriter").field("path", &self.path).field("length", &self.length).finish()
    }
}

impl<T: Target> Drop for StreamWriter<T> {
    fn drop(&mut self) {
        // A writer let go mid-upload (the copy failed or was cancelled) gives its request up.
        if let Some(open) = self.open.take() {
            open.sent.abort();
        }
    }
}

impl<T: Target> StreamWriter<T> {
    /// An upload of the file at `path`, of `length` bytes if known (`crate::length_of`).
    pub(crate) fn new(target: Arc<T>, ctx: &OperationContext, path: &str, length: Option<u64>) -> Self {
        Self {
            target,
            ctx: ctx.clone(),
            path: path.to_owned(),
            length,
            open: None,
            kept: Some(Vec::new()),
            kept_len: 0,
            ended_early: false,
            failed: None,
        }
    }

    async fn start(&mut self) -> Result<()> {
        if self.open.is_some() {
            return Ok(());
        }
        let Opened { mut request, head, tail, state } = self.target.open(&self.ctx, &self.path, self.length).await?;
        let (tx, feed) = mpsc::channel::<std::io::Result<Bytes>>(QUEUED);
        let length = self.length.map(|n| n + head.len() as u64 + tail.len() as u64);
        request.extensions_mut().insert(StreamedBody { feed: Arc::new(Mutex::new(Some(feed))), length });
        let transport = self.ctx.http_transport().clone();
        let sent = tokio::spawn(async move { transport.send(request).await });
        let mut open = Open { tx, sent, tail, state };
        if !head.is_empty() && open.tx.send(Ok(head)).await.is_err() {
            // The request ended at once: its answer (in `write` or `close`) says why.
            open.tx = mpsc::channel(1).0;
        }
        self.open = Some(open);
        Ok(())
    }

    /// Keeps `piece` while the file is small enough to be sent again from memory.
    fn keep(&mut self, piece: &Bytes) {
        self.kept_len += piece.len() as u64;
        match &mut self.kept {
            Some(kept) if self.kept_len <= REPLAY_MAX => kept.push(piece.clone()),
            _ => self.kept = None,
        }
    }

    fn early(&self) -> opendal::Error {
        err(ErrorKind::Unexpected, format!("the server ended the upload of {} early", self.path))
    }

    fn refuse_after_failure(&self) -> Result<()> {
        match &self.failed {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }

    /// Runs one step of a started upload: a failure is kept and told again by later steps.
    fn note(&mut self, result: Result<Metadata>) -> Result<Metadata> {
        if let Err(e) = &result {
            self.failed =
                Some(Failure { kind: e.kind(), message: e.message().to_owned(), temporary: e.is_temporary() });
        }
        result
    }

    /// The request's outcome, once its body is complete (or the server stopped reading it).
    async fn answer(&mut self, complete: bool) -> Result<Metadata> {
        let Some(Open { tx, sent, tail, state }) = self.open.take() else {
            return Err(err(ErrorKind::Unexpected, format!("the upload of {} was not started", self.path)));
        };
        if complete && !tail.is_empty() {
            let _ = tx.send(Ok(tail)).await;
        }
        drop(tx);
        let doing = format!("cannot write {}", self.path);
        match sent.await {
            Ok(Ok(resp)) => self.target.finish(&self.ctx, &self.path, state, resp).await,
            Ok(Err(e)) => {
                self.target.abandon(&self.ctx, state).await;
                // Sent again by the copy if it may pass (a lost connection, a pace that gave up).
                let again = e.is_temporary();
                let e = err(e.kind(), format!("{doing}: {}", e.message()));
                Err(if again { crate::send_again(e) } else { e })
            }
            Err(e) => {
                self.target.abandon(&self.ctx, state).await;
                Err(err(ErrorKind::Unexpected, format!("{doing}: {e}")))
            }
        }
    }
}

impl<T: Target> oio::Write for StreamWriter<T> {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.refuse_after_failure()?;
        // Starting may fail and be tried again (folders, a session); once started, a step cut off may not.
        self.start().await?;
        self.failed = Some(Failure {
            kind: ErrorKind::Unexpected,
            message: format!("an earlier write to {} was cut off", self.path),
            temporary: true,
        });
        for piece in bs {
            self.keep(&piece);
            if self.ended_early {
                continue;
            }
            let Some(open) = self.open.as_ref() else { break };
            if open.tx.send(Ok(piece)).await.is_err() {
                if self.kept.is_some() {
                    // The file may be sent again whole from memory: the answer is read at `close`.
                    self.ended_early = true;
                    continue;
                }
                // The request ended before its body did: its answer says why.
                let answered = self.answer(false).await;
                let ended = answered.and_then(|_| Err(self.early()));
                return self.note(ended).map(drop);
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
        let mut replays = 0;
        loop {
            self.start().await?;
            self.failed = Some(Failure {
                kind: ErrorKind::Unexpected,
                message: format!("finishing the upload of {} was cut off", self.path),
                temporary: true,
            });
            if replays > 0 {
                // The file again, from memory.
                for piece in self.kept.clone().unwrap_or_default() {
                    let Some(open) = self.open.as_ref() else { break };
                    if open.tx.send(Ok(piece)).await.is_err() {
                        self.ended_early = true;
                        break;
                    }
                }
            }
            let complete = !std::mem::take(&mut self.ended_early);
            let answered = self.answer(complete).await;
            let answered = if complete { answered } else { answered.and_then(|_| Err(self.early())) };
            match answered {
                Err(e) if replays < REPLAYS && self.kept.is_some() && crate::is_send_again(&e) => {
                    replays += 1;
                    tracing::debug!(path = %self.path, error = %e, "sending a small upload again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << replays)).await;
                    self.failed = None;
                }
                answered => {
                    let done = self.note(answered)?;
                    self.failed = None;
                    return Ok(done);
                }
            }
        }
    }

    async fn abort(&mut self) -> Result<()> {
        if let Some(Open { tx, sent, state, .. }) = self.open.take() {
            // An error in the body makes the client give the request up.
            let _ = tx.try_send(Err(std::io::Error::other("the upload was abandoned")));
            drop(tx);
            sent.abort();
            self.target.abandon(&self.ctx, state).await;
        }
        self.failed = Some(Failure {
            kind: ErrorKind::Unexpected,
            message: format!("the upload of {} was abandoned", self.path),
            temporary: false,
        });
        Ok(())
    }
}
