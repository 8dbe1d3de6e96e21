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

/// The innermost HTTP transport of a connection: requests go through reqwest as OpenDAL sends them, except
/// those with a [`StreamedBody`], whose body is fed as it comes, through a client without a read timeout.
pub(crate) struct StreamingTransport {
    inner: opendal_http_transport_reqwest::ReqwestTransport,
    unhurried: Option<reqwest::Client>,
}

impl StreamingTransport {
    /// `client` for everything, `unhurried` (the same settings without a read timeout nor redirects) for streamed
    /// bodies, on the connections that send them.
    pub(crate) fn new(client: reqwest::Client, unhurried: Option<reqwest::Client>) -> Self {
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
        let Some(client) = &self.unhurried else {
            return Err(err(ErrorKind::Unexpected, "this connection does not stream uploads"));
        };
        let (parts, _) = req.into_parts();
        let stream = futures_util::stream::poll_fn(move |cx| feed.poll_recv(cx));
        let mut builder = client
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

impl Opened<()> {
    /// A request with nothing around the file and nothing to carry.
    pub(crate) fn bare(request: http::request::Builder) -> Result<Self> {
        let request = request
            .body(Buffer::new())
            .map_err(|e| err(ErrorKind::Unexpected, format!("cannot make the upload's request: {e}")))?;
        Ok(Self { request, head: Bytes::new(), tail: Bytes::new(), state: () })
    }
}

/// Makes the folders above `path` through the service `inner` (up to the connection's root, which may not
/// exist yet either).
pub(crate) async fn folders_above(inner: &opendal::raw::Servicer, ctx: &OperationContext, path: &str) -> Result<()> {
    use opendal::raw::Service as _;
    let parent = match path.trim_end_matches('/').rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/"),
        None => "/".to_owned(),
    };
    inner.create_dir(ctx, &parent, opendal::raw::OpCreateDir::default()).await.map(drop)
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

/// An OpenDAL layer giving a service streamed uploads: its writer is a [`StreamWriter`] over the [`Target`] made
/// from the service (which the target may call, for folders); `name` for debugging output.
pub(crate) fn layer<T: Target>(
    name: &'static str,
    make: impl Fn(opendal::raw::Servicer) -> T + Send + Sync + 'static,
) -> crate::WriteLayer<StreamWriter<T>> {
    // Written in pieces, one after another, into one request, told its length (as write metadata); an empty
    // file is an empty body.
    let capability =
        |c| opendal::Capability { write_can_multi: true, write_can_empty: true, write_with_user_metadata: true, ..c };
    crate::WriteLayer::new(name, capability, move |inner, ctx, path, args| {
        Ok(StreamWriter::new(Arc::new(make(inner.clone())), ctx, path, crate::length_of(&args)?))
    })
}

/// The request under way, given up when let go (a writer dropped or a step cut off mid-answer).
struct Sent(tokio::task::JoinHandle<Result<http::Response<Buffer>>>);

impl Drop for Sent {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
    again: bool,
}

impl Failure {
    fn of(e: &opendal::Error) -> Self {
        // A failure that may pass, once the upload has begun, is the copy's to send again whole.
        Self { kind: e.kind(), message: e.message().to_owned(), again: crate::is_send_again(e) || e.is_temporary() }
    }

    fn error(&self) -> opendal::Error {
        finished(err(self.kind, self.message.clone()), self.again)
    }
}

/// A failure as this writer returns it: marked for the copy to send the file again if `again`, and never
/// retried as it is by OpenDAL's retry layer (it would only be told the same failure again).
fn finished(e: opendal::Error, again: bool) -> opendal::Error {
    if again {
        crate::send_again(e).set_persistent()
    } else if e.is_temporary() {
        e.set_persistent()
    } else {
        e
    }
}

/// An upload of one file in one streamed request.
pub(crate) struct StreamWriter<T: Target> {
    target: Arc<T>,
    ctx: OperationContext,
    path: String,
    length: Option<u64>,
    open: Option<Open<T::State>>,
    /// Bytes handed in so far.
    written: u64,
    /// The file as handed in so far, while it is small enough to be sent again from memory.
    kept: Option<Vec<Bytes>>,
    /// Times it was sent again from memory.
    replays: u32,
    /// The request ended before the body did, and the file is kept: the answer is read at `close`.
    ended_early: bool,
    /// Set before each step and cleared after it. Found set, a step failed or was cut off, the body is
    /// incomplete, and every later step fails as that one did (a retry of the step cannot mend it; the copy
    /// sends the whole file again).
    failed: Option<Failure>,
}

impl<T: Target> Debug for StreamWriter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWriter").field("path", &self.path).field("length", &self.length).finish()
    }
}

impl<T: Target> StreamWriter<T> {
    /// An upload of the file at `path`, of `length` bytes if known (`crate::length_of`).
    pub(crate) fn new(target: Arc<T>, ctx: &OperationContext, path: &str, length: Option<u64>) -> Self {
        // A file known to be too big to keep is not kept at all.
        let kept = (length.unwrap_or(0) <= REPLAY_MAX).then(Vec::new);
        Self {
            target,
            ctx: ctx.clone(),
            path: path.to_owned(),
            length,
            open: None,
            written: 0,
            kept,
            replays: 0,
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
        let sent = Sent(tokio::spawn(async move { transport.send(request).await }));
        let open = Open { tx, sent, tail, state };
        if !head.is_empty() && open.tx.send(Ok(head)).await.is_err() {
            // The request ended at once: its answer says why.
            self.ended_early = true;
        }
        self.open = Some(open);
        Ok(())
    }

    /// Counts `piece` in, and keeps it while the file is small enough to be sent again from memory.
    fn keep(&mut self, piece: &Bytes) -> Result<()> {
        self.written += piece.len() as u64;
        if let Some(n) = self.length
            && self.written > n
        {
            // The file grew while it was read: the request must not end as if whole.
            if let Some(open) = self.open.take() {
                let _ = open.tx.try_send(Err(std::io::Error::other("the file grew while it was sent")));
            }
            return Err(err(ErrorKind::Unexpected, format!("{} grew while it was sent", self.path)));
        }
        match &mut self.kept {
            Some(kept) if self.written <= REPLAY_MAX => kept.push(piece.clone()),
            _ => self.kept = None,
        }
        Ok(())
    }

    fn early(&self) -> opendal::Error {
        crate::send_again(err(ErrorKind::Unexpected, format!("the server ended the upload of {} early", self.path)))
    }

    fn refuse_after_failure(&self) -> Result<()> {
        match &self.failed {
            Some(f) => Err(f.error()),
            None => Ok(()),
        }
    }

    /// Marks a step as begun: until it is cleared, a step cut off leaves the upload failed.
    fn begin(&mut self, doing: &str) {
        self.failed = Some(Failure {
            kind: ErrorKind::Unexpected,
            message: format!("{doing} {} was cut off", self.path),
            again: true,
        });
    }

    /// Ends one step of a started upload: a failure is kept and told again by later steps.
    fn note<R>(&mut self, result: Result<R>) -> Result<R> {
        match result {
            Ok(r) => {
                self.failed = None;
                Ok(r)
            }
            Err(e) => {
                let failure = Failure::of(&e);
                self.failed = Some(failure.clone());
                Err(failure.error())
            }
        }
    }

    /// The request's outcome, once its body is complete (or the server stopped reading it early).
    async fn answer(&mut self, complete: bool) -> Result<Metadata> {
        let Some(Open { tx, sent, tail, state }) = self.open.take() else {
            return Err(err(ErrorKind::Unexpected, format!("the upload of {} was not started", self.path)));
        };
        if complete && !tail.is_empty() {
            let _ = tx.send(Ok(tail)).await;
        }
        drop(tx);
        let doing = format!("cannot write {}", self.path);
        let joined = {
            let mut sent = sent;
            (&mut sent.0).await
        };
        match joined {
            // An answer to a body that did not end as it should is not taken as a success, whatever it says.
            Ok(Ok(resp)) if !complete && resp.status().is_success() => {
                self.target.abandon(&self.ctx, state).await;
                Err(self.early())
            }
            Ok(Ok(resp)) => self.target.finish(&self.ctx, &self.path, state, resp).await,
            Ok(Err(e)) => {
                self.target.abandon(&self.ctx, state).await;
                // Sent again by the copy if it may pass (a lost connection, a pace that gave up).
                let again = e.is_temporary() || crate::is_send_again(&e);
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
        if self.open.is_none() && self.written == 0 {
            self.start().await?;
        }
        self.begin("an earlier write to");
        for piece in bs {
            let kept = self.keep(&piece);
            self.note(kept)?;
            self.begin("an earlier write to");
            if !self.ended_early
                && let Some(open) = self.open.as_ref()
                && open.tx.send(Ok(piece)).await.is_err()
            {
                self.ended_early = true;
            }
            if self.ended_early && self.kept.is_none() {
                // The request ended before its body did, and the file cannot be sent again from memory: its
                // answer says why, now.
                let answered: Result<()> = self.answer(false).await.and_then(|_| Err(self.early()));
                return self.note(answered).map(drop);
            }
        }
        self.failed = None;
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.refuse_after_failure()?;
        if self.written == 0 && self.length.is_none() {
            // Nothing was written: an empty file, of a length known.
            self.length = Some(0);
        }
        if let Some(n) = self.length
            && self.written != n
        {
            self.open = None;
            let short = err(ErrorKind::Unexpected, format!("{} was {} bytes, not {n}", self.path, self.written));
            return self.note(Err(short));
        }
        loop {
            // Sent again from memory when the earlier request was answered with a failure that may pass.
            let replay = self.open.is_none() && self.written > 0;
            if replay {
                self.begin("sending again");
                let started = self.start().await;
                self.note(started)?;
            } else {
                // Nothing is lost if this fails (an empty file not started yet): it may be tried again.
                self.start().await?;
            }
            self.begin("finishing the upload of");
            if replay {
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
            match answered {
                Err(e) if self.replays < REPLAYS && self.kept.is_some() && crate::is_send_again(&e) => {
                    self.replays += 1;
                    tracing::debug!(path = %self.path, error = %e, "sending a small upload again");
                    tokio::time::sleep(std::time::Duration::from_millis(200 << self.replays)).await;
                }
                answered => return self.note(answered),
            }
        }
    }

    async fn abort(&mut self) -> Result<()> {
        if let Some(Open { tx, sent, state, .. }) = self.open.take() {
            // An error in the body makes the client give the request up.
            let _ = tx.try_send(Err(std::io::Error::other("the upload was abandoned")));
            drop(tx);
            drop(sent);
            self.target.abandon(&self.ctx, state).await;
        }
        self.failed = Some(Failure {
            kind: ErrorKind::Unexpected,
            message: format!("the upload of {} was abandoned", self.path),
            again: false,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU32, Ordering};

    use oio::Write as _;
    use opendal::{HttpTransporter, MetadataBuilder};

    use super::*;

    /// What the fake server saw of one request: the body's bytes, and whether it ended whole.
    type Seen = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

    /// A server that reads each streamed body (unless told not to) and answers with the next status.
    struct Server {
        seen: Seen,
        statuses: Arc<Mutex<VecDeque<u16>>>,
        read: bool,
    }

    impl HttpTransport for Server {
        async fn fetch(&self, req: http::Request<Buffer>) -> Result<http::Response<HttpBody>> {
            let body = req.extensions().get::<StreamedBody>().cloned().expect("a streamed body");
            let mut feed = body.feed.lock().expect("lock").take().expect("sent once");
            let mut got = Vec::new();
            let mut whole = true;
            if self.read {
                while let Some(piece) = feed.recv().await {
                    match piece {
                        Ok(b) => got.extend_from_slice(&b),
                        Err(_) => {
                            whole = false;
                            break;
                        }
                    }
                }
            }
            self.seen.lock().expect("lock").push((got, whole));
            let status = self.statuses.lock().expect("lock").pop_front().unwrap_or(200);
            Ok(http::Response::builder()
                .status(status)
                .body(HttpBody::new(futures_util::stream::iter([Ok(Buffer::new())]), Some(0)))
                .expect("answer"))
        }
    }

    /// A remote whose 503 answers may pass, and whose `open` fails (for a moment) at the given call.
    struct Remote {
        opens: AtomicU32,
        fail_open_at: Option<u32>,
    }

    impl Target for Remote {
        type State = ();

        async fn open(&self, _: &OperationContext, _: &str, _: Option<u64>) -> Result<Opened<()>> {
            let n = self.opens.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail_open_at == Some(n) {
                return Err(err(ErrorKind::Unexpected, "the remote is unreachable").set_temporary());
            }
            let request = http::Request::put("http://127.0.0.1:9/f").body(Buffer::new()).expect("request");
            Ok(Opened { request, head: Bytes::from_static(b"<"), tail: Bytes::from_static(b">"), state: () })
        }

        async fn finish(
            &self,
            _: &OperationContext,
            _: &str,
            (): (),
            answer: http::Response<Buffer>,
        ) -> Result<Metadata> {
            match answer.status().as_u16() {
                200 => Ok(MetadataBuilder::file(0).build()),
                503 => Err(crate::send_again(err(ErrorKind::Unexpected, "busy"))),
                s => Err(err(ErrorKind::PermissionDenied, format!("refused with {s}"))),
            }
        }

        async fn abandon(&self, _: &OperationContext, (): ()) {}
    }

    fn setup(statuses: &[u16], read: bool, fail_open_at: Option<u32>, length: u64) -> (StreamWriter<Remote>, Seen) {
        let seen = Seen::default();
        let server =
            Server { seen: seen.clone(), statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())), read };
        let ctx = OperationContext::new().with_http_transport(HttpTransporter::new(server));
        let remote = Arc::new(Remote { opens: AtomicU32::new(0), fail_open_at });
        (StreamWriter::new(remote, &ctx, "f", Some(length)), seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_small_file_refused_for_a_passing_reason_is_sent_again_from_memory() {
        let (mut w, seen) = setup(&[503, 503, 200], true, None, 6);
        w.write(Buffer::from(&b"abc"[..])).await.expect("write");
        w.write(Buffer::from(&b"def"[..])).await.expect("write");
        w.close().await.expect("sent at the third try");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen, vec![(b"<abcdef>".to_vec(), true); 3], "each try carries the whole file");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reopen_never_sends_an_empty_file() {
        // The first answer may pass; sending again cannot even start: every later close fails as that one did.
        let (mut w, seen) = setup(&[503], true, Some(2), 3);
        w.write(Buffer::from(&b"abc"[..])).await.expect("write");
        let e = w.close().await.expect_err("the reopen failed");
        assert!(crate::is_send_again(&e) && !e.is_temporary(), "for the copy to send again, not a retry: {e:?}");
        let again = w.close().await.expect_err("told again");
        assert_eq!(again.message(), e.message());
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen, vec![(b"<abc>".to_vec(), true)], "no other request, and no empty one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_grows_is_cut_off_not_sent_whole() {
        let (mut w, seen) = setup(&[200], true, None, 4);
        w.write(Buffer::from(&b"abc"[..])).await.expect("write");
        let e = w.write(Buffer::from(&b"de"[..])).await.expect_err("grew");
        assert!(e.message().contains("grew"), "{e:?}");
        assert!(w.close().await.is_err(), "closing after that fails too");
        tokio::task::yield_now().await;
        let seen = seen.lock().expect("lock").clone();
        assert!(seen.iter().all(|(_, whole)| !whole), "the body ended in an error: {seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_file_the_server_stopped_reading_fails_at_once() {
        // Past what is kept in memory: the answer is read as soon as the body cannot go on.
        let (mut w, _) = setup(&[403], false, None, REPLAY_MAX + 10);
        let piece = Buffer::from(vec![0u8; 1 << 20]);
        let mut failed = None;
        for _ in 0..9 {
            if let Err(e) = w.write(piece.clone()).await {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("a write fails before the whole file is read");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e:?}");
    }
}
