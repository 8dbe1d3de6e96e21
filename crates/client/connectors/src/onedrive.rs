//! OneDrive uploads that stream, as an OpenDAL layer over OpenDAL's OneDrive service (whose writer takes a whole
//! file in one buffer and cuts it into fragments only then). A file over 4 MiB goes in a Graph upload session
//! (`createUploadSession`, then `PUT` fragments of 5 MiB, a multiple of 320 KiB as Graph asks, each as the
//! copy hands the bytes in), so memory holds a fragment or two whatever the file's size. The file appears at
//! its name only with the last fragment. Smaller files still go in one request through OpenDAL.
//!
//! The copy hands in the file's size (the write's `cloudsync-length` metadata, as for WebDAV): every fragment
//! names the total. Requests go through the connection's HTTP transport (the OAuth token on the session's
//! creation only: upload addresses are pre-authenticated and must get none; the pace, waiting out 429s). A
//! fragment sent again after its answer was lost is refused with `416`, and the session's status (a `GET` on
//! its address) then shows Graph has it; a last fragment whose answer was lost, sent again to a session that
//! ended with it, is taken as done when the file is there with the right size.

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, header};
use opendal::raw::oio::{self, Write as _};
use opendal::raw::{OpCreateDir, OpStat, OpWrite, Service, Servicer};
use opendal::{Buffer, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use serde_json::{Value, json};

use crate::oauth::PLACEHOLDER;

type Result<T> = opendal::Result<T>;

const DRIVE_ROOT: &str = "https://graph.microsoft.com/v1.0/me/drive/root";
/// Files up to this size go in one request (Graph's simple upload takes up to 250 MB; OpenDAL uses 4 MiB).
const SIMPLE_MAX: u64 = 4 << 20;
/// Fragment size: a multiple of 320 KiB, as Graph asks of every fragment but the last, and 5 MiB, within Graph's
/// advice (5 to 10 MiB) and small enough to go within the HTTP client's 60 s read timeout on a slow line.
const FRAGMENT: usize = 327_680 * 16;
/// Largest answer read (session answers are a few hundred bytes of JSON).
const MAX_ANSWER: usize = 1 << 20;

fn err(kind: ErrorKind, message: impl Into<String>) -> opendal::Error {
    opendal::Error::new(kind, message.into())
}

/// The layer: OneDrive's service with large writes in upload sessions, under the connection's `root`.
pub(crate) fn layer(root: &str) -> crate::WriteLayer<SessionWriter> {
    // The root as OpenDAL's OneDrive service takes it (`/a/b/`).
    let root = opendal::raw::normalize_root(root);
    // Written in pieces, one after another; told the length as write metadata.
    let capability = |c| opendal::Capability { write_can_multi: true, write_with_user_metadata: true, ..c };
    crate::WriteLayer::new("OnedriveUploadSessions", capability, move |inner, ctx, path, args| {
        Ok(SessionWriter {
            inner: inner.clone(),
            ctx: ctx.clone(),
            path: path.to_owned(),
            abs: opendal::raw::build_rooted_abs_path(&root, path),
            length: crate::length_of(&args)?,
            held: Vec::new(),
            upload_url: None,
            carry: Bytes::new(),
            confirmed: 0,
        })
    })
}

/// Writes one file: small ones held and sent in one request, larger ones streamed through a session.
pub(crate) struct SessionWriter {
    inner: Servicer,
    ctx: OperationContext,
    path: String,
    /// The path under the drive's root.
    abs: String,
    /// The file's size, as the copy gave it.
    length: Option<u64>,
    /// A small file's pieces (or any file's, without a length), sent whole at the end.
    held: Vec<Bytes>,
    /// The session's upload address, once made.
    upload_url: Option<String>,
    /// Bytes handed in but not sent yet (less than a fragment, or a fragment and what follows it).
    carry: Bytes,
    /// Bytes of the file Graph has confirmed (the offset `carry` starts at).
    confirmed: u64,
}

impl SessionWriter {
    fn streamed(&self) -> Option<u64> {
        self.length.filter(|&n| n > SIMPLE_MAX)
    }

    async fn answer(&self, req: Request<Buffer>, what: &str) -> Result<(StatusCode, Value)> {
        // A request that failed on the way may go again, with the whole file if need be.
        let again = |e: opendal::Error| {
            if e.is_temporary() { crate::send_again(err(e.kind(), e.to_string())) } else { e }
        };
        let too_big = format!("Graph's answer to {what} was too large");
        let (parts, body) = crate::exchange(&self.ctx, req, MAX_ANSWER, &too_big).await.map_err(again)?.into_parts();
        let bytes = body.to_bytes();
        let json = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
        Ok((parts.status, json))
    }

    fn refused(&self, what: &str, status: StatusCode, answer: &Value) -> opendal::Error {
        let message = answer["error"]["message"].as_str().unwrap_or("(no message)");
        let code = answer["error"]["code"].as_str().unwrap_or("");
        let kind = match status {
            StatusCode::CONFLICT => ErrorKind::AlreadyExists,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorKind::PermissionDenied,
            StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited,
            _ => ErrorKind::Unexpected,
        };
        let e = err(kind, format!("OneDrive refused {what} for {}: {status} {code} {message}", self.abs));
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS { crate::send_again(e) } else { e }
    }

    /// Makes the upload session (the folders above the file first).
    async fn session(&mut self) -> Result<String> {
        if let Some(url) = &self.upload_url {
            return Ok(url.clone());
        }
        if let Some((parent, _)) = self.path.trim_end_matches('/').rsplit_once('/') {
            self.inner.create_dir(&self.ctx, &format!("{parent}/"), OpCreateDir::default()).await?;
        }
        let name = self.abs.rsplit('/').next().unwrap_or_default();
        let body = json!({ "item": { "@microsoft.graph.conflictBehavior": "replace", "name": name } }).to_string();
        let url = format!("{DRIVE_ROOT}:{}:/createUploadSession", opendal::raw::percent_encode_path(&self.abs));
        let req = Request::post(url)
            .header(header::AUTHORIZATION, format!("Bearer {PLACEHOLDER}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(Buffer::from(Bytes::from(body)))
            .map_err(|e| err(ErrorKind::Unexpected, format!("cannot build a Graph request: {e}")))?;
        let (status, answer) = self.answer(req, "createUploadSession").await?;
        if !status.is_success() {
            return Err(self.refused("createUploadSession", status, &answer));
        }
        let url = answer["uploadUrl"]
            .as_str()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
            .ok_or_else(|| err(ErrorKind::Unexpected, "OneDrive made an upload session without its address"))?
            .to_owned();
        self.upload_url = Some(url.clone());
        Ok(url)
    }

    /// Sends the fragment of `bytes` at `at` of `total` (the last one puts the file in place).
    async fn fragment(&mut self, at: u64, bytes: Bytes, total: u64) -> Result<()> {
        let url = self.session().await?;
        let len = bytes.len() as u64;
        let last = at + len == total;
        // No Authorization: the address is pre-authenticated, and Graph may refuse a token sent to it.
        let req = Request::put(url)
            .header(header::CONTENT_RANGE, format!("bytes {at}-{}/{total}", at + len - 1))
            .header(header::CONTENT_LENGTH, len)
            .body(Buffer::from(bytes))
            .map_err(|e| err(ErrorKind::Unexpected, format!("cannot build a Graph request: {e}")))?;
        let (status, answer) = self.answer(req, "an upload fragment").await?;
        match status {
            StatusCode::ACCEPTED if !last => Ok(()),
            StatusCode::OK | StatusCode::CREATED if last => Ok(()),
            // A fragment sent again after its answer was lost: the session's status says Graph expects the
            // range after it.
            StatusCode::RANGE_NOT_SATISFIABLE if !last && self.expects().await? == Some(at + len) => Ok(()),
            _ => Err(self.refused("an upload fragment", status, &answer)),
        }
    }

    /// Where the session expects the next fragment (Graph's status of an upload session).
    async fn expects(&self) -> Result<Option<u64>> {
        let Some(url) = self.upload_url.clone() else { return Ok(None) };
        let req = Request::get(url)
            .body(Buffer::new())
            .map_err(|e| err(ErrorKind::Unexpected, format!("cannot build a Graph request: {e}")))?;
        let (status, answer) = self.answer(req, "an upload session's status").await?;
        Ok(if status.is_success() { next_expected(&answer) } else { None })
    }

    /// A small file, in one request through OpenDAL (what was held stays held: a close tried again sends it
    /// again).
    async fn write_held(&mut self) -> Result<Metadata> {
        let mut w = self.inner.write(&self.ctx, &self.path, OpWrite::default())?;
        w.write(Buffer::from(self.held.clone())).await?;
        w.close().await
    }

    /// After the last fragment's answer was lost: whether the file is in place, of the right size.
    async fn finished_before(&self, total: u64) -> bool {
        self.inner
            .stat(&self.ctx, &self.path, OpStat::default())
            .await
            .is_ok_and(|rp| rp.into_metadata().content_length() == total)
    }
}

/// The start of the first range Graph still expects, from a session answer.
fn next_expected(answer: &Value) -> Option<u64> {
    let first = answer["nextExpectedRanges"].as_array()?.first()?.as_str()?;
    first.split('-').next()?.parse().ok()
}

impl oio::Write for SessionWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        let Some(total) = self.streamed() else {
            self.held.extend(bs);
            return Ok(());
        };
        // What is carried and what comes now; fragments go while more than one fragment's worth is there, so
        // that the last fragment (which ends the session) goes at close. A failure leaves the carry as it was: a
        // write tried again sends the same fragments, and Graph's 416 tells those it has.
        let mut all = BytesMut::from(&self.carry[..]);
        for piece in bs {
            all.extend_from_slice(&piece);
        }
        // Fragments, and the carry, are slices of one buffer, not copies.
        let all = all.freeze();
        let mut at = 0;
        while all.len() - at > FRAGMENT {
            let offset = self.confirmed + at as u64;
            if offset + FRAGMENT as u64 >= total {
                break;
            }
            self.fragment(offset, all.slice(at..at + FRAGMENT), total).await?;
            at += FRAGMENT;
        }
        self.carry = all.slice(at..);
        self.confirmed += at as u64;
        Ok(())
    }

    async fn close(&mut self) -> Result<Metadata> {
        let Some(total) = self.streamed() else { return self.write_held().await };
        let sent = self.confirmed + self.carry.len() as u64;
        if sent != total || self.carry.is_empty() {
            return Err(err(
                ErrorKind::Unexpected,
                format!("{}: {sent} bytes were handed in for a file of {total}", self.abs),
            ));
        }
        match self.fragment(self.confirmed, self.carry.clone(), total).await {
            Ok(()) => {}
            // Sent again after its answer was lost, to a session that ended with it.
            Err(e) if self.finished_before(total).await => drop(e),
            Err(e) => return Err(e),
        }
        self.confirmed = total;
        self.carry = Bytes::new();
        Ok(MetadataBuilder::file(total).build())
    }

    async fn abort(&mut self) -> Result<()> {
        // The session is cancelled; nothing appeared at the file's name.
        if let Some(url) = self.upload_url.take()
            && let Ok(req) = Request::delete(url).body(Buffer::new())
        {
            let _ = self.ctx.http_transport().fetch(req).await;
        }
        self.held.clear();
        self.carry = Bytes::new();
        Ok(())
    }
}
