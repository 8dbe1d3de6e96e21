//! S3 uploads that carry on where an earlier run stopped, as an OpenDAL layer over OpenDAL's S3 service (whose
//! multipart uploads cannot be taken up again: their upload id stays inside its writer).
//!
//! A file of more than one piece is sent as a multipart upload of our own: the upload's id is kept in a small
//! file in the local state folder (`uploads/`, named by a hash of the endpoint, bucket and key), the parts go up
//! as many at once as the writer was given (`concurrent`), each logged once the server took it, and the upload
//! is completed at the end, when the object appears whole. When a run is cut off (Ctrl-C, a lost network, a
//! crash), the upload stays on the server, and the next copy of the file to the same place lists the parts
//! already there and sends only the ones whose MD5 (S3's part ETag) and size differ from the file's own bytes,
//! so a changed file is never patched with stale parts. The completed object's ETag is checked against the
//! parts sent. An upload the server no longer knows (aborted, expired by a lifecycle rule) starts afresh.
//!
//! Requests are signed here with AWS Signature Version 4 (the payload hashed), and go through the connection's
//! transport, so its TLS settings and pace apply. Files of one piece or less go through OpenDAL's writer.

use std::collections::BTreeMap;
use std::fmt::{self, Debug, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use opendal::raw::Service as _;
use opendal::raw::oio;
use opendal::{Buffer, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use ring::{digest, hmac};
use zeroize::Zeroizing;

use crate::upstate::{REUSED_KEY, STATE_KEY};

type Result<T> = opendal::Result<T>;

/// The size of a part (the copy's piece).
pub(crate) const PART: usize = crate::transfer::CHUNK;
/// Most parts one upload may have (S3's limit): a part grows past this many pieces' worth.
const MAX_PARTS: u64 = 10_000;
/// Longest answer read.
const MAX_ANSWER: usize = 4 << 20;

fn err(kind: ErrorKind, message: impl Into<String>) -> opendal::Error {
    opendal::Error::new(kind, message.into())
}

/// What the layer needs.
pub(crate) struct Settings {
    /// `https://s3.eu-west-1.amazonaws.com`, `https://ACCOUNT.r2.cloudflarestorage.com`, `http://127.0.0.1:9000`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub root: String,
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
}

impl Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The layer: S3's service with uploads that resume.
pub(crate) fn layer(mut settings: Settings) -> crate::WriteLayer<Writer> {
    settings.root = opendal::raw::normalize_root(&settings.root);
    settings.endpoint = settings.endpoint.trim_end_matches('/').to_owned();
    let settings = Arc::new(settings);
    let capability = |c| opendal::Capability { write_with_user_metadata: true, ..c };
    crate::WriteLayer::new("S3ResumableUploads", capability, move |inner, ctx, path, args| {
        let state = args.user_metadata().and_then(|m| m.get(STATE_KEY)).map(PathBuf::from);
        let length = crate::length_of(&args)?;
        match (state, length) {
            (Some(dir), Some(length)) if resumable(&settings.bucket, length) => {
                let key = opendal::raw::build_abs_path(&settings.root, path);
                let in_flight = args.concurrent().max(1);
                let target = Arc::new(Target { s3: settings.clone(), ctx: ctx.clone(), key });
                Ok(Writer::Resumable(Box::new(Upload::new(target, length, &dir, in_flight))))
            }
            // Our keys must never become the object's metadata (the state folder is a local path).
            (Some(_), _) => Err(err(
                ErrorKind::Unexpected,
                format!("{path}: upload state was given for a write that cannot resume (this is a bug)"),
            )),
            (None, _) => inner.write(ctx, path, args).map(Writer::Inner),
        }
    })
}

/// Whether an upload of `length` bytes to `bucket` goes as a resumable upload: more than one part, and not to
/// an S3 Express directory bucket (whose requests are signed in sessions of their own: OpenDAL's writer).
pub(crate) fn resumable(bucket: &str, length: u64) -> bool {
    length > PART as u64 && !bucket.ends_with("--x-s3")
}

/// OpenDAL's writer, or ours.
pub(crate) enum Writer {
    Inner(oio::Writer),
    Resumable(Box<Upload>),
}

impl oio::Write for Writer {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        match self {
            Self::Inner(w) => oio::Write::write(w, bs).await,
            Self::Resumable(w) => {
                w.begin()?;
                let written = w.write(bs).await;
                w.settle(written)
            }
        }
    }

    async fn close(&mut self) -> Result<Metadata> {
        match self {
            Self::Inner(w) => oio::Write::close(w).await,
            Self::Resumable(w) => {
                w.begin()?;
                let closed = w.close().await;
                w.settle(closed)
            }
        }
    }

    async fn abort(&mut self) -> Result<()> {
        match self {
            Self::Inner(w) => oio::Write::abort(w).await,
            // The parts stay on the server for the next run to take up: those sent are logged, the others
            // stopped.
            Self::Resumable(w) => {
                let _ = w.log_finished();
                w.sending.abort_all();
                Ok(())
            }
        }
    }
}

/// A part of the object: its number, the server's ETag, its MD5 and its size.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Part {
    number: u32,
    etag: String,
    md5: String,
    size: u64,
}

/// The head of an upload's log in the state file; a line a part sent follows it, with the ETag the server gave
/// it (R2's and encrypted buckets' are not MD5s). A part sent again is logged again: the last line of a number
/// stands.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    bucket: String,
    key: String,
    upload_id: String,
    part_size: u64,
}

/// Where an upload's requests go: shared by the upload and its parts being sent.
struct Target {
    s3: Arc<Settings>,
    ctx: OperationContext,
    key: String,
}

/// What became of a part handed to be sent.
enum Outcome {
    /// The server took it.
    Took(Part),
    /// The server had it already, with the same bytes.
    Had(Part),
    /// The server no longer knows the upload.
    Ended,
}

/// One resumable multipart upload.
pub(crate) struct Upload {
    target: Arc<Target>,
    length: u64,
    part_size: u64,
    /// Most parts hashed and sent at once.
    in_flight: usize,
    /// Parts being hashed and sent, each to its outcome. Dropped with the writer, which ends them (first: before
    /// the state's lock goes).
    sending: tokio::task::JoinSet<Result<Outcome>>,
    /// What is kept of the upload's id and parts for a later run (upstate.rs).
    kept: crate::upstate::Kept,
    /// The upload's id once started.
    upload_id: Option<String>,
    /// Parts the server holds for it (by number: ETag, size), and what an earlier run recorded of them.
    listed: BTreeMap<u32, (String, u64)>,
    recorded: BTreeMap<u32, Part>,
    /// Parts of the object the server has, by number.
    parts: BTreeMap<u32, Part>,
    /// Parts handed to be sent so far (each of `part_size` bytes: only the last part, at close, is shorter).
    numbered: u32,
    /// Bytes waiting to fill a part.
    pending: Vec<Bytes>,
    pending_len: u64,
    /// Bytes found already on the server and not sent again.
    reused: u64,
    /// A step is under way: found set when a step begins, the last one was cut off (a timeout) midway.
    busy: bool,
    /// Set once a step failed: bytes handed in may be lost, so every later step fails as that one did.
    broken: Option<(ErrorKind, String, bool)>,
}

impl Upload {
    fn new(target: Arc<Target>, length: u64, state_dir: &std::path::Path, in_flight: usize) -> Self {
        // S3 allows 10,000 parts: a file past 10,000 pieces (78 GiB) goes in bigger parts.
        let part_size = (PART as u64).max(length.div_ceil(MAX_PARTS).next_multiple_of(1 << 20));
        let kept = crate::upstate::Kept::new(
            state_dir,
            &format!("{}\n{}\n{}", target.s3.endpoint, target.s3.bucket, target.key),
        );
        Self {
            target,
            length,
            part_size,
            in_flight,
            sending: tokio::task::JoinSet::new(),
            kept,
            upload_id: None,
            listed: BTreeMap::new(),
            recorded: BTreeMap::new(),
            parts: BTreeMap::new(),
            numbered: 0,
            pending: Vec::new(),
            pending_len: 0,
            reused: 0,
            busy: false,
            broken: None,
        }
    }
}

impl Target {
    /// The object's address (path style), as OpenDAL's service forms it.
    fn url(&self, query: &str) -> String {
        let path = format!("/{}/{}", self.s3.bucket, self.key);
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("{}{}{q}", self.s3.endpoint, uri_encode(&path, false))
    }

    /// Sends one signed request, again after a pause (1 s, 2 s, 4 s) when it failed for a reason that may pass;
    /// its answer, whole. `payload` is
    /// the body's SHA-256 in hex ([`EMPTY_SHA256`] for no body).
    async fn send(&self, method: Method, query: &str, body: Buffer, payload: &str) -> Answer {
        self.send_while(method, query, body, payload, may_pass).await.0
    }

    /// Sends one signed request, again after a pause (1 s, 2 s, 4 s) while `again` says of its answer; the last
    /// answer, and whether the request was sent more than once.
    async fn send_while(
        &self,
        method: Method,
        query: &str,
        body: Buffer,
        payload: &str,
        again: impl Fn(&Answer) -> bool,
    ) -> (Answer, bool) {
        let mut tries = 0;
        loop {
            let answer = self.send_once(method.clone(), query, body.clone(), payload).await;
            if tries == 3 || !again(&answer) {
                return (answer, tries > 0);
            }
            tokio::time::sleep(std::time::Duration::from_secs(1 << tries)).await;
            tries += 1;
        }
    }

    async fn send_once(&self, method: Method, query: &str, body: Buffer, payload: &str) -> Answer {
        let url = self.url(query);
        let uri: http::Uri = url.parse().map_err(|e| {
            err(
                ErrorKind::ConfigInvalid,
                format!("the S3 address {url} is not valid ({e}); check the connection's --endpoint"),
            )
        })?;
        let host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        let (date, stamp) = amz_date(now);
        let canonical_query = canonical_query(query);
        let canonical = format!(
            "{method}\n{}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{stamp}\n\n\
             host;x-amz-content-sha256;x-amz-date\n{payload}",
            uri.path()
        );
        let scope = format!("{date}/{}/s3/aws4_request", self.s3.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
            hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
        );
        let sign = |key: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
        let secret = Zeroizing::new(format!("AWS4{}", self.s3.secret_access_key.as_str()));
        let k = sign(secret.as_bytes(), &date);
        let k = sign(k.as_ref(), &self.s3.region);
        let k = sign(k.as_ref(), "s3");
        let k = sign(k.as_ref(), "aws4_request");
        let signature = hex::encode(sign(k.as_ref(), &to_sign));
        let mut auth = http::HeaderValue::from_str(&format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, \
             Signature={signature}",
            self.s3.access_key_id
        ))
        .map_err(|_| err(ErrorKind::ConfigInvalid, "the access key id cannot go in a header"))?;
        auth.set_sensitive(true);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, host)
            .header("x-amz-content-sha256", payload)
            .header("x-amz-date", stamp)
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_LENGTH, body.len());
        if query.starts_with("uploadId=") {
            req = req.header(header::CONTENT_TYPE, "application/xml");
        }
        let req = req.body(body).map_err(|e| err(ErrorKind::Unexpected, format!("cannot make an S3 request: {e}")))?;
        let (parts, answer) =
            crate::exchange(&self.ctx, req, MAX_ANSWER, "S3 answered with more than 4 MiB").await?.into_parts();
        Ok((parts.status, parts.headers, answer.to_bytes()))
    }

    /// An S3 error answer as an OpenDAL error.
    fn failure(doing: &str, status: StatusCode, body: &[u8]) -> opendal::Error {
        let text = String::from_utf8_lossy(body);
        let code = tag(&text, "Code").unwrap_or_default();
        let message = tag(&text, "Message").unwrap_or_default();
        let kind = match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => ErrorKind::PermissionDenied,
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited,
            _ => ErrorKind::Unexpected,
        };
        let e = err(kind, format!("{doing}: S3 answered {status} {code} {message}").trim_end().to_owned());
        if passing(status, body) { e.set_temporary() } else { e }
    }

    /// Best effort: ends an upload that will not be completed, so its parts stop being billed.
    async fn abort_upload(&self, id: &str) {
        let query = format!("uploadId={}", uri_encode(id, true));
        let _ = self.send_once(Method::DELETE, &query, Buffer::new(), EMPTY_SHA256).await;
    }
}

impl Upload {
    /// Takes up the upload an earlier run left, if there is one and it is still on the server; else starts one.
    async fn start(&mut self) -> Result<()> {
        if self.upload_id.is_some() {
            return Ok(());
        }
        if let Some((saved, parts)) = self.take_up_state() {
            if saved.part_size != self.part_size {
                // Made for parts of another size (the file's size changed a lot): of no use.
                self.target.abort_upload(&saved.upload_id).await;
            } else {
                match self.list_parts(&saved.upload_id).await {
                    Ok(listed) => {
                        tracing::debug!(key = %self.target.key, parts = listed.len(), "taking up an earlier upload");
                        self.listed = listed;
                        self.recorded = parts.into_iter().map(|p| (p.number, p)).collect();
                        self.upload_id = Some(saved.upload_id);
                        return Ok(());
                    }
                    Err(e) if e.is_temporary() => return Err(e),
                    // Gone (aborted, expired), or not to be listed: a new upload.
                    Err(e) => {
                        tracing::debug!(key = %self.target.key, error = %e, "not taking up the earlier upload");
                        if e.kind() != ErrorKind::NotFound {
                            self.target.abort_upload(&saved.upload_id).await;
                        }
                    }
                }
            }
        }
        // Sent once: sent twice, it would start two uploads.
        let (status, _, body) = self.target.send_once(Method::POST, "uploads=", Buffer::new(), EMPTY_SHA256).await?;
        if status != StatusCode::OK {
            return Err(Target::failure("cannot start a multipart upload", status, &body));
        }
        let id = tag(&String::from_utf8_lossy(&body), "UploadId")
            .map(|t| unescape(&t))
            .ok_or_else(|| err(ErrorKind::Unexpected, "S3 started an upload but named no UploadId"))?;
        self.kept.start_log::<_, Part>(
            &Head {
                bucket: self.target.s3.bucket.clone(),
                key: self.target.key.clone(),
                upload_id: id.clone(),
                part_size: self.part_size,
            },
            &[],
        );
        self.upload_id = Some(id);
        Ok(())
    }

    /// What an earlier run kept of this upload (locking its state for this run): its head and the parts sent.
    fn take_up_state(&mut self) -> Option<(Head, Vec<Part>)> {
        let (head, parts) = self.kept.take_up_log::<Head, Part>()?;
        (head.bucket == self.target.s3.bucket && head.key == self.target.key).then_some((head, parts))
    }

    /// Forgets the upload (done, or given up).
    fn drop_state(&mut self) {
        self.kept.forget();
    }

    async fn list_parts(&self, id: &str) -> Result<BTreeMap<u32, (String, u64)>> {
        let mut listed = BTreeMap::new();
        let mut marker = 0u32;
        loop {
            let query = format!("part-number-marker={marker}&uploadId={}", uri_encode(id, true));
            let (status, _, body) = self.target.send(Method::GET, &query, Buffer::new(), EMPTY_SHA256).await?;
            if status != StatusCode::OK {
                return Err(Target::failure("cannot list the parts of an earlier upload", status, &body));
            }
            let text = String::from_utf8_lossy(&body);
            for part in text.split("<Part>").skip(1) {
                let number = tag(part, "PartNumber").and_then(|n| n.parse().ok());
                let size = tag(part, "Size").and_then(|n| n.parse().ok());
                let etag = tag(part, "ETag").map(|e| etag_of(&e));
                if let (Some(n), Some(s), Some(e)) = (number, size, etag) {
                    listed.insert(n, (e, s));
                }
            }
            match tag(&text, "NextPartNumberMarker").and_then(|n| n.parse().ok()) {
                Some(next) if tag(&text, "IsTruncated").as_deref() == Some("true") && next > marker => marker = next,
                _ => return Ok(listed),
            }
        }
    }

    /// Hands a part to be sent beside the ones under way, once fewer than `in_flight` are.
    async fn put_part(&mut self, data: Buffer) -> Result<()> {
        self.start().await?;
        // Parts sent meanwhile are logged at once, not when their place is needed.
        self.log_finished()?;
        while self.sending.len() >= self.in_flight {
            self.reap().await?;
        }
        self.numbered += 1;
        let number = self.numbered;
        let listed = self.listed.get(&number).cloned();
        let recorded = self.recorded.get(&number).cloned();
        let id = self.upload_id.clone().unwrap_or_default();
        self.sending.spawn(send_part(self.target.clone(), id, number, data, listed, recorded));
        Ok(())
    }

    /// Waits for the next part under way to be sent, and keeps it.
    async fn reap(&mut self) -> Result<()> {
        match self.sending.join_next().await {
            Some(joined) => self.keep(joined),
            None => Ok(()),
        }
    }

    /// Keeps what became of a part; on a failure, first logs the other parts the server took meanwhile, for
    /// the next run to take up.
    fn keep(&mut self, joined: std::result::Result<Result<Outcome>, tokio::task::JoinError>) -> Result<()> {
        let outcome = joined
            .map_err(|e| err(ErrorKind::Unexpected, format!("sending a part of {} stopped: {e}", self.target.key)))
            .and_then(|o| o);
        match outcome {
            Ok(Outcome::Took(part)) => {
                self.kept.append(&part);
                self.parts.insert(part.number, part);
                Ok(())
            }
            Ok(Outcome::Had(part)) => {
                self.reused += part.size;
                self.parts.insert(part.number, part);
                Ok(())
            }
            Ok(Outcome::Ended) => Err(self.ended()),
            Err(e) => {
                let _ = self.log_finished();
                Err(e)
            }
        }
    }

    /// Keeps the parts whose sending has ended, without waiting for the others.
    fn log_finished(&mut self) -> Result<()> {
        let mut first = Ok(());
        while let Some(joined) = self.sending.try_join_next() {
            let kept = self.keep(joined);
            if first.is_ok() {
                first = kept;
            }
        }
        first
    }

    /// A step's outcome as the writer returns it. A failure is final for this writer: OpenDAL's retries would
    /// hand in the same bytes again, which may be partly taken already. One that may pass is marked for the
    /// copy to send the file again, which takes the upload up from the parts the server has.
    fn settle<R>(&mut self, result: Result<R>) -> Result<R> {
        self.busy = false;
        let e = match result {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        let broken = self
            .broken
            .get_or_insert_with(|| (e.kind(), e.message().to_owned(), e.is_temporary() || crate::is_send_again(&e)));
        Err(refusal(broken))
    }

    /// Begins a step; a step found still under way was cut off midway (a timeout), which leaves this writer
    /// unusable: the copy sends the file again.
    fn begin(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.busy, true) && self.broken.is_none() {
            self.broken = Some((ErrorKind::Unexpected, format!("sending {} was cut off", self.target.key), true));
        }
        match &self.broken {
            Some(broken) => Err(refusal(broken)),
            None => Ok(()),
        }
    }

    async fn write(&mut self, bs: Buffer) -> Result<()> {
        for piece in bs {
            self.pending_len += piece.len() as u64;
            self.pending.push(piece);
            while self.pending_len >= self.part_size {
                let part = self.take(self.part_size);
                self.put_part(part).await?;
            }
        }
        Ok(())
    }

    /// The first `n` pending bytes.
    fn take(&mut self, n: u64) -> Buffer {
        let mut out = Vec::new();
        let mut left = n;
        while left > 0 && !self.pending.is_empty() {
            let first = &mut self.pending[0];
            let len = first.len() as u64;
            if len <= left {
                out.push(self.pending.remove(0));
                left -= len;
            } else {
                out.push(first.split_to(usize::try_from(left).unwrap_or(usize::MAX)));
                left = 0;
            }
        }
        self.pending_len -= n - left;
        Buffer::from(out)
    }

    async fn close(&mut self) -> Result<Metadata> {
        // Checked before the last part goes: a short file never starts, or adds to, an upload.
        let sent = u64::from(self.numbered) * self.part_size + self.pending_len;
        if sent != self.length {
            return Err(err(
                ErrorKind::Unexpected,
                format!("{} bytes of {} were handed in instead of {}", sent, self.target.key, self.length),
            ));
        }
        if self.pending_len > 0 {
            let rest = self.take(self.pending_len);
            self.put_part(rest).await?;
        }
        while !self.sending.is_empty() {
            self.reap().await?;
        }
        let id = self.upload_id.clone().unwrap_or_default();
        let mut xml = String::from("<CompleteMultipartUpload>");
        for p in self.parts.values() {
            let _ =
                write!(xml, "<Part><PartNumber>{}</PartNumber><ETag>\"{}\"</ETag></Part>", p.number, escape(&p.etag));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let query = format!("uploadId={}", uri_encode(&id, true));
        // Sent again here after an answer that may pass; completing is then "uncertain": it may have been done.
        let payload = hex::encode(digest::digest(&digest::SHA256, xml.as_bytes()));
        let xml = Buffer::from(xml.into_bytes());
        // S3 may answer 200 with an error in the body, once it has started completing.
        let again = |answer: &Answer| {
            may_pass(answer) || matches!(answer, Ok((StatusCode::OK, _, body)) if body_has_error(body))
        };
        let (answer, uncertain) = self.target.send_while(Method::POST, &query, xml, &payload, again).await;
        let (status, _, body) = answer?;
        let text = String::from_utf8_lossy(&body);
        // The object's ETag is the MD5 of its parts' MD5s, with their count (where the parts' ETags are MD5s).
        let md5_parts = self.parts.values().all(|p| p.etag.eq_ignore_ascii_case(&p.md5));
        let expected = {
            use md5::Digest as _;
            let mut all = Vec::with_capacity(self.parts.len() * 16);
            for p in self.parts.values() {
                all.extend(hex::decode(&p.md5).unwrap_or_default());
            }
            format!("{}-{}", hex::encode(md5::Md5::digest(&all)), self.parts.len())
        };
        let gone = no_such_upload(status, &body);
        let etag = if gone && uncertain {
            // Completed by an earlier try whose answer was lost: the object there is checked instead.
            match self.completed_already(md5_parts.then_some(expected.as_str())).await {
                Ok(etag) => etag,
                Err(e) => {
                    self.drop_state();
                    return Err(e);
                }
            }
        } else if gone {
            return Err(self.ended());
        } else if status != StatusCode::OK || body_has_error(&body) {
            // S3 may answer 200 with an error in the body, once it has started completing.
            let status = if status == StatusCode::OK { StatusCode::INTERNAL_SERVER_ERROR } else { status };
            return Err(Target::failure(&format!("cannot complete the upload of {}", self.target.key), status, &body));
        } else {
            tag(&text, "ETag").map(|e| etag_of(&e))
        };
        // Done: the upload is no longer to be taken up.
        self.drop_state();
        if let Some(etag) = &etag
            && md5_parts
            && etag.contains('-')
            && !etag.eq_ignore_ascii_case(&expected)
        {
            return Err(err(
                ErrorKind::Unexpected,
                format!(
                    "{} was completed with ETag {etag}, not the {expected} of the parts sent; copy it again",
                    self.target.key
                ),
            ));
        }
        let mut md = MetadataBuilder::file(sent);
        md.user_metadata([(REUSED_KEY.to_owned(), self.reused.to_string())]);
        Ok(md.build())
    }

    /// After a NoSuchUpload to completing: the object, if it is there with this upload's size (and ETag, when
    /// known); its ETag.
    async fn completed_already(&self, expected: Option<&str>) -> Result<Option<String>> {
        let (status, headers, _) = self.target.send(Method::HEAD, "", Buffer::new(), EMPTY_SHA256).await?;
        let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(etag_of);
        let size = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let matches = expected.is_none_or(|x| etag.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(x)));
        if status == StatusCode::OK && size == Some(self.length) && matches {
            return Ok(etag);
        }
        let e = err(
            ErrorKind::Unexpected,
            format!(
                "the upload of {} is no longer on the server and the object there is not the file",
                self.target.key
            ),
        );
        Err(crate::send_again(e).set_persistent())
    }

    /// After the server answered that the upload is gone (aborted, expired by a lifecycle rule): it is forgotten,
    /// and the copy sends the file again, in a new upload.
    fn ended(&mut self) -> opendal::Error {
        self.drop_state();
        let e = err(ErrorKind::Unexpected, format!("the upload of {} was ended on the server", self.target.key));
        crate::send_again(e).set_persistent()
    }
}

/// Sends part `number` of an upload, unless the server has it already with the same bytes: its ETag is the
/// part's MD5, or the one an earlier run recorded for a part of that MD5.
async fn send_part(
    target: Arc<Target>,
    id: String,
    number: u32,
    data: Buffer,
    listed: Option<(String, u64)>,
    recorded: Option<Part>,
) -> Result<Outcome> {
    let hashed = data.clone();
    let (md5, sha256) = tokio::task::spawn_blocking(move || {
        use md5::Digest as _;
        let mut m = md5::Md5::new();
        let mut s = digest::Context::new(&digest::SHA256);
        for piece in hashed {
            m.update(&piece);
            s.update(&piece);
        }
        (hex::encode(m.finalize()), hex::encode(s.finish()))
    })
    .await
    .map_err(|e| err(ErrorKind::Unexpected, format!("hashing a part failed: {e}")))?;
    let size = data.len() as u64;
    if let Some((etag, listed_size)) = listed
        && listed_size == size
        && (etag.eq_ignore_ascii_case(&md5)
            || recorded.is_some_and(|r| r.etag == etag && r.md5 == md5 && r.size == size))
    {
        return Ok(Outcome::Had(Part { number, etag, md5, size }));
    }
    let query = format!("partNumber={number}&uploadId={}", uri_encode(&id, true));
    let (status, headers, body) = target.send(Method::PUT, &query, data, &sha256).await?;
    if no_such_upload(status, &body) {
        return Ok(Outcome::Ended);
    }
    if status != StatusCode::OK {
        return Err(Target::failure(&format!("cannot send part {number} of {}", target.key), status, &body));
    }
    // The part's ETag (its MD5 on S3 and the services like it, something else on R2 and for encrypted
    // buckets) is what completing the upload names it by.
    let etag = headers.get(header::ETAG).and_then(|v| v.to_str().ok()).map(etag_of).ok_or_else(|| {
        err(ErrorKind::Unexpected, format!("S3 took part {number} of {} without an ETag", target.key))
    })?;
    Ok(Outcome::Took(Part { number, etag, md5, size }))
}

/// An S3 answer read whole (status, headers, body), or the failure to get one.
type Answer = Result<(StatusCode, http::HeaderMap, Bytes)>;

/// Whether an answer, or the failure to get one, may pass if the request is sent again.
fn may_pass(answer: &Answer) -> bool {
    match answer {
        Ok((status, _, body)) => passing(*status, body),
        Err(e) => e.is_temporary(),
    }
}

/// Whether S3 answered that the upload is gone.
fn no_such_upload(status: StatusCode, body: &[u8]) -> bool {
    status == StatusCode::NOT_FOUND && tag(&String::from_utf8_lossy(body), "Code").as_deref() == Some("NoSuchUpload")
}

/// The error a broken writer answers with: for the copy to send the file again when the failure may pass, and
/// never to be retried as it is by OpenDAL's retry layer.
fn refusal((kind, message, again): &(ErrorKind, String, bool)) -> opendal::Error {
    let e = err(*kind, message.clone());
    if *again { crate::send_again(e).set_persistent() } else { e }
}

/// SHA-256 of nothing.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Whether an answer says to try again later: the server's trouble, a push-back, or a request it timed out.
fn passing(status: StatusCode, body: &[u8]) -> bool {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return true;
    }
    let text = String::from_utf8_lossy(body);
    matches!(
        tag(&text, "Code").as_deref(),
        Some("RequestTimeout" | "SlowDown" | "InternalError" | "ServiceUnavailable")
    )
}

/// Whether a 200 answer holds an error (S3 may answer so, once it has started completing).
fn body_has_error(body: &[u8]) -> bool {
    String::from_utf8_lossy(body).contains("<Error>")
}

/// An ETag as written in an answer or a header, without its quotes and XML escapes.
fn etag_of(raw: &str) -> String {
    unescape(raw).trim().trim_matches('"').to_owned()
}

/// XML text with its five named escapes and numeric ones undone.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(end) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..end];
        let ch = match entity {
            "quot" => Some('"'),
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &tail[end + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text made safe to put in an XML element.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The endpoint as OpenDAL's S3 service makes it of the configured one (so both address the same objects):
/// `https://` when no scheme is given, the bucket taken out of the host, default ports left out, and AWS's
/// global endpoint (also the default) made the region's.
pub(crate) fn endpoint_for(configured: Option<&str>, bucket: &str, region: &str) -> String {
    let mut endpoint = match configured {
        Some(e) if e.starts_with("http") => e.to_owned(),
        Some(e) => format!("https://{e}"),
        None => "https://s3.amazonaws.com".to_owned(),
    };
    endpoint = endpoint.trim_end_matches('/').replace(&format!("//{bucket}."), "//");
    if let Ok(url) = reqwest::Url::parse(&endpoint) {
        endpoint = url.to_string().trim_end_matches('/').to_owned();
    }
    match endpoint.as_str() {
        "https://s3.amazonaws.com" => format!("https://s3.{region}.amazonaws.com"),
        _ => endpoint,
    }
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` for `secs` after the epoch (UTC).
fn amz_date(secs: u64) -> (String, String) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}{m:02}{d:02}");
    let stamp = format!("{date}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60);
    (date, stamp)
}

/// AWS's URI encoding: every byte but `A-Za-z0-9-._~` as `%XX`, and `/` too when `slash`.
fn uri_encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') || (b == b'/' && !slash) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The query as signed: pairs sorted, each side encoded (our queries are built already encoded, of plain
/// pairs).
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(&str, &str)> =
        query.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
    pairs.sort_unstable();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// The text of the first `<name>` element in `xml`.
fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(amz_date(0), ("19700101".into(), "19700101T000000Z".into()));
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(amz_date(1_709_210_096), ("20240229".into(), "20240229T123456Z".into()));
        assert_eq!(amz_date(4_102_444_799), ("20991231".into(), "20991231T235959Z".into()));
    }

    #[test]
    fn names_and_queries_are_encoded_as_aws_signs_them() {
        assert_eq!(uri_encode("/b/a dir/ü+x~.bin", false), "/b/a%20dir/%C3%BC%2Bx~.bin");
        assert_eq!(uri_encode("a/b=", true), "a%2Fb%3D");
        assert_eq!(canonical_query("uploadId=x&partNumber=2"), "partNumber=2&uploadId=x");
        assert_eq!(canonical_query("uploads="), "uploads=");
    }

    /// The example from AWS's Signature Version 4 documentation ("GET Object"), reproduced step by step.
    #[test]
    fn the_signing_key_chain_matches_aws_documentation() {
        let sign = |key: &[u8], data: &str| hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes());
        let k = sign(b"AWS4wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "20130524");
        let k = sign(k.as_ref(), "us-east-1");
        let k = sign(k.as_ref(), "s3");
        let k = sign(k.as_ref(), "aws4_request");
        let canonical = "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
                         x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
                         x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
                         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n{}",
            hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
        );
        assert_eq!(
            hex::encode(sign(k.as_ref(), &to_sign)),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn endpoints_are_made_as_opendal_makes_them() {
        assert_eq!(endpoint_for(None, "b", "eu-west-1"), "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(
            endpoint_for(Some("https://s3.amazonaws.com/"), "b", "us-east-2"),
            "https://s3.us-east-2.amazonaws.com"
        );
        assert_eq!(
            endpoint_for(Some("https://b.s3.eu-west-1.amazonaws.com"), "b", "x"),
            "https://s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(endpoint_for(Some("https://Host.Example:443/"), "b", "x"), "https://host.example");
        assert_eq!(endpoint_for(Some("minio.local:9000"), "b", "x"), "https://minio.local:9000");
        assert_eq!(endpoint_for(Some("http://127.0.0.1:9000"), "b", "x"), "http://127.0.0.1:9000");
    }

    #[test]
    fn etags_lose_their_quotes_and_escapes() {
        assert_eq!(etag_of("&quot;abc&quot;"), "abc");
        assert_eq!(etag_of("&#34;abc-2&#34;"), "abc-2");
        assert_eq!(etag_of("\"ABwc/3T+x=\""), "ABwc/3T+x=");
        assert_eq!(unescape("a &amp; b &lt;&#x41;&gt; &bogus; &"), "a & b <A> &bogus; &");
        assert_eq!(escape("a&<b>"), "a&amp;&lt;b&gt;");
    }

    #[test]
    fn elements_are_read_from_answers() {
        let xml = "<ListPartsResult><IsTruncated>false</IsTruncated><Part><PartNumber>1</PartNumber>\
                   <ETag>&quot;abc&quot;</ETag><Size>5</Size></Part></ListPartsResult>";
        assert_eq!(tag(xml, "IsTruncated").as_deref(), Some("false"));
        assert_eq!(tag(xml, "ETag").as_deref(), Some("&quot;abc&quot;"));
        assert_eq!(tag(xml, "Missing"), None);
    }
}
