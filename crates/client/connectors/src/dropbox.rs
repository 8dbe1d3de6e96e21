//! Dropbox upload sessions, as an OpenDAL layer over OpenDAL's Dropbox service (whose writer sends a whole file
//! in one `files/upload` request, which Dropbox caps at 150 MiB and which holds the file in memory).
//!
//! A file that fits in one piece (the copy's first 8 MiB) still goes in one `files/upload` through OpenDAL.
//! Anything larger streams: `files/upload_session/start` with the first piece, `append_v2` with each next piece
//! at its offset, and `finish` with the commit (overwrite, mute), which makes the file appear whole at once, so
//! no partial file is ever visible under its name. Pieces but the last are multiples of 4 MiB, as Dropbox asks.
//!
//! Every request goes through the connection's HTTP transport: the OAuth token, its refresh, the ASCII escaping
//! of `Dropbox-API-Arg` and the pace (waiting out 429s) apply as for OpenDAL's own requests. A piece whose
//! answer was lost and that is sent again is recognised by Dropbox's `incorrect_offset` answer naming the offset
//! after it, and not sent twice. The file's Dropbox content hash is computed as the pieces go, and the file
//! `finish` made must carry it: a `finish` whose answer was lost, sent again and told the session is gone,
//! looks the file up and accepts it only with that hash and size.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use opendal::raw::oio;
use opendal::raw::{OpWrite, Service, Servicer};
use opendal::{Buffer, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use serde_json::{Value, json};

use crate::oauth::PLACEHOLDER;

type Result<T> = opendal::Result<T>;

const CONTENT: &str = "https://content.dropboxapi.com/2/files";
const API: &str = "https://api.dropboxapi.com/2/files";
/// Dropbox's content hash works on blocks of this size.
const HASH_BLOCK: usize = 4 << 20;
/// Largest answer read (session answers are a few hundred bytes of JSON).
const MAX_ANSWER: usize = 1 << 20;
/// Dropbox takes at most 150 MiB in one request: larger pieces are refused (a copy hands in 8 MiB ones).
const MAX_PIECE: usize = 148 << 20;

fn err(kind: ErrorKind, message: impl Into<String>) -> opendal::Error {
    opendal::Error::new(kind, message.into())
}

/// The layer: Dropbox's service with writes in upload sessions, under the connection's `root`.
pub(crate) fn layer(root: &str) -> crate::WriteLayer<SessionWriter> {
    // The root as OpenDAL's Dropbox service takes it (`/` or `/a/b/`).
    let root = opendal::raw::normalize_root(root);
    // Written in pieces, one after another.
    let capability = |c| opendal::Capability { write_can_multi: true, ..c };
    crate::WriteLayer::new("DropboxUploadSessions", capability, move |inner, ctx, path, args| {
        Ok(SessionWriter {
            inner: inner.clone(),
            ctx: ctx.clone(),
            path: path.to_owned(),
            abs: opendal::raw::build_rooted_abs_path(&root, path),
            args,
            first: None,
            session: None,
            offset: 0,
            hash: ContentHash::default(),
            finishing: false,
        })
    })
}

/// Writes one file: held until a second piece shows it needs a session, then streamed through one.
pub(crate) struct SessionWriter {
    inner: Servicer,
    ctx: OperationContext,
    path: String,
    /// The path as Dropbox names it.
    abs: String,
    args: OpWrite,
    /// The first piece, until the file turns out larger than it.
    first: Option<Buffer>,
    /// The session, once started.
    session: Option<String>,
    /// Bytes Dropbox has of the session.
    offset: u64,
    /// Dropbox's content hash of the bytes sent.
    hash: ContentHash,
    /// `finish` was sent (its answer may have been lost).
    finishing: bool,
}

/// Dropbox's content hash: SHA-256 over the SHA-256 of each 4 MiB block.
struct ContentHash {
    blocks: ring::digest::Context,
    block: ring::digest::Context,
    in_block: usize,
}

impl Default for ContentHash {
    fn default() -> Self {
        Self {
            blocks: ring::digest::Context::new(&ring::digest::SHA256),
            block: ring::digest::Context::new(&ring::digest::SHA256),
            in_block: 0,
        }
    }
}

impl ContentHash {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (HASH_BLOCK - self.in_block).min(bytes.len());
            self.block.update(&bytes[..take]);
            self.in_block += take;
            bytes = &bytes[take..];
            if self.in_block == HASH_BLOCK {
                let done = std::mem::replace(&mut self.block, ring::digest::Context::new(&ring::digest::SHA256));
                self.blocks.update(done.finish().as_ref());
                self.in_block = 0;
            }
        }
    }

    fn hex(&self) -> String {
        let mut blocks = self.blocks.clone();
        if self.in_block > 0 {
            blocks.update(self.block.clone().finish().as_ref());
        }
        blocks.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl SessionWriter {
    /// Sends one request of the session API and reads its JSON answer; a 409 comes back as its error summary.
    async fn call(&self, endpoint: &str, arg: &Value, body: Buffer) -> Result<std::result::Result<Value, Value>> {
        let req = Request::post(format!("{CONTENT}/{endpoint}"))
            .header(header::AUTHORIZATION, format!("Bearer {PLACEHOLDER}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, body.len())
            .header("Dropbox-API-Arg", arg.to_string())
            .body(body)
            .map_err(|e| err(ErrorKind::Unexpected, format!("cannot build a Dropbox request: {e}")))?;
        self.exchange(endpoint, req).await
    }

    /// Sends an RPC request (arguments in a JSON body).
    async fn rpc(&self, endpoint: &str, arg: &Value) -> Result<std::result::Result<Value, Value>> {
        let body = Buffer::from(Bytes::from(arg.to_string()));
        let req = Request::post(format!("{API}/{endpoint}"))
            .header(header::AUTHORIZATION, format!("Bearer {PLACEHOLDER}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, body.len())
            .body(body)
            .map_err(|e| err(ErrorKind::Unexpected, format!("cannot build a Dropbox request: {e}")))?;
        self.exchange(endpoint, req).await
    }

    async fn exchange(&self, endpoint: &str, req: Request<Buffer>) -> Result<std::result::Result<Value, Value>> {
        let too_big = format!("Dropbox's answer to {endpoint} was too large");
        let (parts, answer) = crate::exchange(&self.ctx, req, MAX_ANSWER, &too_big).await?.into_parts();
        let bytes = answer.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let json = || serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
        match parts.status {
            s if s.is_success() => Ok(Ok(json())),
            StatusCode::CONFLICT => Ok(Err(json())),
            s => {
                let e = err(
                    ErrorKind::Unexpected,
                    format!("Dropbox answered {endpoint} with {s}: {}", text.chars().take(300).collect::<String>()),
                );
                // Its own failure, or a throttle the pace has waited out already: the piece may go again.
                Err(if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS { e.set_temporary() } else { e })
            }
        }
    }

    fn refused(&self, endpoint: &str, answer: &Value) -> opendal::Error {
        let summary = answer["error_summary"].as_str().unwrap_or("(no error summary)");
        let kind = if summary.contains("conflict/") { ErrorKind::AlreadyExists } else { ErrorKind::Unexpected };
        err(kind, format!("Dropbox refused {endpoint} for {}: {summary}", self.abs))
    }

    /// Sends one piece: the session's first, or the next at its offset.
    async fn send(&mut self, piece: Buffer) -> Result<()> {
        let len = piece.len() as u64;
        let counted = piece.clone();
        match self.session.clone() {
            None => {
                let answer = self.call("upload_session/start", &json!({ "close": false }), piece).await?;
                let answer = answer.map_err(|a| self.refused("upload_session/start", &a))?;
                let id = answer["session_id"]
                    .as_str()
                    .filter(|id| !id.is_empty() && id.len() <= 1024)
                    .ok_or_else(|| err(ErrorKind::Unexpected, "Dropbox started an upload session without its id"))?;
                self.session = Some(id.to_owned());
            }
            Some(id) => {
                let arg = json!({ "cursor": { "session_id": id, "offset": self.offset }, "close": false });
                if let Err(answer) = self.call("upload_session/append_v2", &arg, piece).await? {
                    // A piece sent again after its answer was lost: Dropbox has it already.
                    let correct = answer["error"]["correct_offset"].as_u64();
                    let summary = answer["error_summary"].as_str().unwrap_or_default();
                    if !(summary.starts_with("incorrect_offset") && correct == Some(self.offset + len)) {
                        let e = self.refused("upload_session/append_v2", &answer);
                        return Err(match correct {
                            Some(c) => err(
                                e.kind(),
                                format!("{e} (a piece of {len} bytes at {}; Dropbox has {c})", self.offset),
                            ),
                            None => e,
                        });
                    }
                }
            }
        }
        for part in counted.clone() {
            self.hash.update(&part);
        }
        self.offset += len;
        Ok(())
    }

    /// After a `finish` whose answer was lost: the file it made, if it is this upload's (same size and hash).
    async fn finished_before(&self) -> Result<Option<Metadata>> {
        let Ok(found) = self.rpc("get_metadata", &json!({ "path": self.abs })).await? else { return Ok(None) };
        let (size, hash) = (found["size"].as_u64(), found["content_hash"].as_str());
        if size == Some(self.offset) && hash == Some(self.hash.hex().as_str()) {
            return Ok(Some(MetadataBuilder::file(self.offset).build()));
        }
        Ok(None)
    }
}

/// Pieces handed in by a copy are 8 MiB; a larger one would have to go in several requests, which a retry of
/// the write could not take up where it failed.
fn check_piece(bs: &Buffer) -> Result<()> {
    if bs.len() > MAX_PIECE {
        return Err(err(
            ErrorKind::Unsupported,
            format!("a piece of {} bytes is more than Dropbox takes in one request ({MAX_PIECE})", bs.len()),
        ));
    }
    Ok(())
}

impl oio::Write for SessionWriter {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        if bs.is_empty() {
            return Ok(());
        }
        check_piece(&bs)?;
        if self.session.is_none() {
            match self.first.take() {
                None => {
                    self.first = Some(bs);
                    return Ok(());
                }
                Some(first) => {
                    // Kept until it is sent, so a retry of this call finds it again.
                    self.first = Some(first.clone());
                    self.send(first).await?;
                    self.first = None;
                }
            }
        }
        self.send(bs).await
    }

    async fn close(&mut self) -> Result<Metadata> {
        let Some(id) = self.session.clone() else {
            // One piece: one request, through OpenDAL's own writer.
            let mut one = self.inner.write(&self.ctx, &self.path, self.args.clone())?;
            one.write(self.first.clone().unwrap_or_default()).await?;
            return one.close().await;
        };
        // Dropbox checks the file against its content hash before committing it.
        let arg = json!({
            "cursor": { "session_id": id, "offset": self.offset },
            "commit": { "path": self.abs, "mode": "overwrite", "autorename": false, "mute": true,
                        "strict_conflict": false },
            "content_hash": self.hash.hex(),
        });
        let again = self.finishing;
        self.finishing = true;
        let answer = match self.call("upload_session/finish", &arg, Buffer::from(Bytes::new())).await? {
            Ok(a) => a,
            // Sent before and done then: the session is gone, the file is there.
            Err(a) if again && a["error_summary"].as_str().is_some_and(|s| s.starts_with("lookup_failed/")) => {
                return match self.finished_before().await? {
                    Some(md) => Ok(md),
                    None => Err(self.refused("upload_session/finish", &a)),
                };
            }
            Err(a) => return Err(self.refused("upload_session/finish", &a)),
        };
        let (size, hash) = (answer["size"].as_u64(), answer["content_hash"].as_str());
        let ours = self.hash.hex();
        if size != Some(self.offset) || hash.is_some_and(|h| h != ours) {
            return Err(err(
                ErrorKind::Unexpected,
                format!(
                    "Dropbox holds {} bytes of {} with content hash {} after the upload, not {} bytes with {ours}",
                    size.map_or("?".into(), |s| s.to_string()),
                    self.abs,
                    hash.unwrap_or("?"),
                    self.offset
                ),
            ));
        }
        Ok(MetadataBuilder::file(self.offset).build())
    }

    async fn abort(&mut self) -> Result<()> {
        // An unfinished session holds nothing visible, and Dropbox lets it lapse (after a week).
        self.session = None;
        self.first = None;
        Ok(())
    }
}
