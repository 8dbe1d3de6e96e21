//! Dropbox upload sessions, as an OpenDAL layer over OpenDAL's Dropbox service (whose writer sends a whole file
//! in one `files/upload` request, which Dropbox caps at 150 MiB and which holds the file in memory).
//!
//! A file that fits in one piece (the copy's first 8 MiB) still goes in one `files/upload` through OpenDAL.
//! Anything larger streams: `files/upload_session/start` with the first piece, `append_v2` with each next piece
//! at its offset, and `finish` with the commit (overwrite, mute), which makes the file appear whole at once, so
//! no partial file is ever visible under its name. Pieces but the last are multiples of 4 MiB, as Dropbox asks.
//! Each request names the Dropbox content hash of the bytes it carries, which Dropbox checks; the file `finish`
//! made must have the whole file's.
//!
//! Every request goes through the connection's HTTP transport: the OAuth token, its refresh, the ASCII escaping
//! of `Dropbox-API-Arg` and the pace (waiting out 429s) apply as for OpenDAL's own requests. A piece whose
//! answer was lost and that is sent again is recognised by Dropbox's `incorrect_offset` answer naming the offset
//! after it, and not sent twice. A `finish` whose answer was lost, sent again and told the session is gone,
//! looks the file up and accepts it only with the upload's hash and size.
//!
//! A session outlives the run that began it (Dropbox keeps one for a week): when a copy asks for it (the
//! `cloudsync-state-dir` write metadata), the session's id and the size and content hash of each piece Dropbox
//! took are kept in the state folder (upstate.rs; a line a step, so that keeping a step costs the same however
//! long the file), and the next copy of the file to the same path sends only
//! what follows the pieces whose bytes are still the file's. A file changed meanwhile is never finished with
//! stale pieces: its session is dropped and the file sent again in a new one.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use opendal::raw::oio;
use opendal::raw::{OpWrite, Service, Servicer};
use opendal::{Buffer, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use serde_json::{Value, json};

use crate::oauth::PLACEHOLDER;
use crate::upstate::{Kept, REUSED_KEY, STATE_KEY};

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

/// The layer: Dropbox's service with writes in upload sessions, under the connection's `root`; `account` tells
/// apart the sessions of two connections' kept uploads.
pub(crate) fn layer(root: &str, account: &str) -> crate::WriteLayer<SessionWriter> {
    // The root as OpenDAL's Dropbox service takes it (`/` or `/a/b/`).
    let root = opendal::raw::normalize_root(root);
    let account = account.to_owned();
    // Written in pieces, one after another; told the length and the state folder as write metadata.
    let capability = |c| opendal::Capability { write_can_multi: true, write_with_user_metadata: true, ..c };
    crate::WriteLayer::new("DropboxUploadSessions", capability, move |inner, ctx, path, args| {
        let abs = opendal::raw::build_rooted_abs_path(&root, path);
        let length = crate::length_of(&args)?;
        let kept = match (args.user_metadata().and_then(|m| m.get(STATE_KEY)), length) {
            (Some(dir), Some(_)) => {
                Some(Kept::new(std::path::Path::new(dir), &format!("dropbox\n{account}\n{}", abs.to_lowercase())))
            }
            (Some(_), None) => {
                return Err(err(ErrorKind::Unexpected, "a resumable upload was asked for without the file's length"));
            }
            (None, _) => None,
        };
        Ok(SessionWriter {
            inner: inner.clone(),
            ctx: ctx.clone(),
            path: path.to_owned(),
            abs,
            length,
            first: None,
            session: None,
            offset: 0,
            hash: ContentHash::default(),
            finishing: false,
            kept,
            taken_up: false,
            earlier: false,
            pieces: Vec::new(),
            recorded: Vec::new(),
            sending: None,
            reused: 0,
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
    /// The file's size, as the copy gave it.
    length: Option<u64>,
    /// The first piece, until the file turns out larger than it.
    first: Option<Buffer>,
    /// The session, once started (or taken up).
    session: Option<String>,
    /// Bytes Dropbox has of the session.
    offset: u64,
    /// Dropbox's content hash of the bytes sent.
    hash: ContentHash,
    /// `finish` was sent (its answer may have been lost).
    finishing: bool,
    /// Where the session is kept for a later run, when the copy asked for that.
    kept: Option<Kept>,
    /// What an earlier run kept was looked for.
    taken_up: bool,
    /// The pieces Dropbox has of the session, in order.
    pieces: Vec<Piece>,
    /// The session is one an earlier run began, and Dropbox has not taken a piece of this run yet.
    earlier: bool,
    /// The pieces an earlier run recorded of the session taken up.
    recorded: Vec<Piece>,
    /// The piece last sent at an offset whose answer did not come (Dropbox may have it).
    sending: Option<(u64, Piece)>,
    /// Bytes an earlier run sent and that were not sent again.
    reused: u64,
}

/// A piece of a session: its size and Dropbox content hash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Piece {
    size: u64,
    hash: String,
}

/// The head of a session's log in the state file; a line a step ([`Step`]) follows it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    path: String,
    length: u64,
    session_id: String,
}

/// A step of a session, as its log keeps it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Step {
    /// The piece after those taken is being sent (Dropbox may have it).
    Sending(Piece),
    /// Dropbox took it.
    Took,
}

/// Dropbox's content hash: SHA-256 over the SHA-256 of each 4 MiB block.
#[derive(Clone)]
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

    /// Takes up the session an earlier run kept for this file, once (when the copy asked for one).
    fn take_up(&mut self) {
        if std::mem::replace(&mut self.taken_up, true) {
            return;
        }
        let Some((saved, steps)) = self.kept.as_mut().and_then(Kept::take_up_log::<Head, Step>) else { return };
        if saved.path != self.abs || Some(saved.length) != self.length || saved.session_id.is_empty() {
            return;
        }
        // Each piece is taken once the next one is sent, or once marked so.
        let (mut taken, mut sending) = (Vec::new(), None);
        for step in steps {
            match step {
                Step::Sending(piece) => taken.extend(sending.replace(piece)),
                Step::Took => taken.extend(sending.take()),
            }
        }
        tracing::debug!(path = %self.abs, pieces = taken.len(), "taking up an earlier upload session");
        let at = taken.iter().map(|p: &Piece| p.size).sum();
        self.session = Some(saved.session_id);
        self.earlier = true;
        self.sending = sending.map(|p| (at, p));
        self.recorded = taken;
    }

    /// Keeps a step of the session for a later run.
    fn log(&mut self, step: &Step) {
        if let Some(kept) = &mut self.kept {
            kept.append(step);
        }
    }

    /// Gives up the session an earlier run began (the file is no longer what it sent, or Dropbox no longer has
    /// the session). Before anything was skipped, a new session starts with this piece; after, the copy sends
    /// the file again, whole.
    fn give_up_earlier(&mut self, why: &str) -> Result<()> {
        tracing::debug!(path = %self.abs, why, "not taking up the earlier upload session");
        self.recorded.clear();
        self.sending = None;
        self.session = None;
        self.earlier = false;
        if self.pieces.is_empty() {
            return Ok(());
        }
        self.forget();
        let e = err(ErrorKind::Unexpected, format!("the upload of {} that an earlier run began {why}", self.abs));
        Err(crate::send_again(e).set_persistent())
    }

    /// Sends one piece: the session's first, or the next at its offset; or skips it when an earlier run sent it
    /// with the same bytes.
    async fn send(&mut self, piece: Buffer) -> Result<()> {
        self.take_up();
        let len = piece.len() as u64;
        // The piece's content hash, and the file's with it: hashed off the async threads, once.
        let (this, hash) = {
            let (mut whole, bytes) = (self.hash.clone(), piece.clone());
            tokio::task::spawn_blocking(move || {
                let mut one = ContentHash::default();
                for part in bytes {
                    one.update(&part);
                    whole.update(&part);
                }
                (Piece { size: len, hash: one.hex() }, whole)
            })
            .await
            .map_err(|e| err(ErrorKind::Unexpected, format!("hashing a piece failed: {e}")))?
        };
        if let Some(earlier) = self.recorded.get(self.pieces.len()) {
            if *earlier == this {
                self.reused += len;
                self.took(this, hash);
                return Ok(());
            }
            self.give_up_earlier("holds other bytes than the file now has")?;
        }
        if self.sending.as_ref().is_some_and(|b| *b != (self.offset, this.clone())) {
            // Other bytes than an earlier run was sending here, which Dropbox may have taken: not to be told
            // apart, so the file goes again (whole, unless nothing was passed over yet).
            self.give_up_earlier("was sending other bytes than the file now has")?;
        }
        if let Some(id) = self.session.clone() {
            // Recorded before it goes: if its answer is lost, Dropbox may have it when a later run comes. A
            // piece sent again (by this run, or after an earlier one) is the log's last step already.
            let before = self.sending.replace((self.offset, this.clone()));
            if before.is_none() {
                self.log(&Step::Sending(this.clone()));
            }
            let arg = json!({
                "cursor": { "session_id": id, "offset": self.offset }, "close": false, "content_hash": this.hash,
            });
            let answered = self.call("upload_session/append_v2", &arg, piece.clone()).await?;
            let taken_up = std::mem::take(&mut self.earlier);
            match answered {
                Ok(_) => {
                    self.sending = None;
                    self.log(&Step::Took);
                }
                Err(answer) => {
                    let correct = answer["error"]["correct_offset"].as_u64();
                    let summary = answer["error_summary"].as_str().unwrap_or_default();
                    if summary.starts_with("incorrect_offset")
                        && correct == Some(self.offset + len)
                        && before == Some((self.offset, this.clone()))
                    {
                        // This piece, sent before (by this run or an earlier one) and its answer lost: Dropbox has
                        // it.
                        self.sending = None;
                        self.log(&Step::Took);
                    } else if taken_up && (summary.starts_with("not_found") || summary.starts_with("incorrect_offset"))
                    {
                        // A session taken up that Dropbox no longer has as it was left (it lapsed, or took a
                        // piece whose answer was lost and whose bytes are not these).
                        self.give_up_earlier("is no longer on Dropbox as it was left")?;
                    } else {
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
        if self.session.is_none() {
            let arg = json!({ "close": false, "content_hash": this.hash });
            let answer = self.call("upload_session/start", &arg, piece).await?;
            let answer = answer.map_err(|a| self.refused("upload_session/start", &a))?;
            let id = answer["session_id"]
                .as_str()
                .filter(|id| !id.is_empty() && id.len() <= 1024)
                .ok_or_else(|| err(ErrorKind::Unexpected, "Dropbox started an upload session without its id"))?;
            self.session = Some(id.to_owned());
            if let (Some(kept), Some(length)) = (&mut self.kept, self.length) {
                let head = Head { path: self.abs.clone(), length, session_id: id.to_owned() };
                kept.start_log(&head, &[Step::Sending(this.clone()), Step::Took]);
            }
            self.took(this, hash);
            return Ok(());
        }
        self.took(this, hash);
        Ok(())
    }

    /// Forgets the kept session (finished, or of no more use).
    fn forget(&mut self) {
        if let Some(kept) = &mut self.kept {
            kept.forget();
        }
    }

    /// Counts a piece Dropbox has.
    fn took(&mut self, piece: Piece, hash: ContentHash) {
        self.offset += piece.size;
        self.pieces.push(piece);
        self.hash = hash;
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
        if let Some(first) = self.first.clone() {
            // Kept until it is sent, so a retry of this call finds it again.
            self.send(first).await?;
            self.first = None;
        } else if self.pieces.is_empty() {
            self.first = Some(bs);
            return Ok(());
        }
        self.send(bs).await
    }

    async fn close(&mut self) -> Result<Metadata> {
        let Some(id) = self.session.clone() else {
            // One piece: one request, through OpenDAL's own writer (Dropbox's writer takes no metadata).
            let mut one = self.inner.write(&self.ctx, &self.path, OpWrite::default())?;
            one.write(self.first.clone().unwrap_or_default()).await?;
            return one.close().await;
        };
        // The body is empty, and so is the content it names (a content hash is of the bytes of one request); the
        // file Dropbox makes is checked against the whole file's below.
        let arg = json!({
            "cursor": { "session_id": id, "offset": self.offset },
            "commit": { "path": self.abs, "mode": "overwrite", "autorename": false, "mute": true,
                        "strict_conflict": false },
        });
        let again = self.finishing;
        self.finishing = true;
        let answer = match self.call("upload_session/finish", &arg, Buffer::from(Bytes::new())).await? {
            Ok(a) => a,
            Err(a)
                if a["error_summary"].as_str().is_some_and(|s| {
                    s.starts_with("lookup_failed/not_found") || s.starts_with("lookup_failed/incorrect_offset")
                }) =>
            {
                // Sent before and done then: the session is gone, the file is there.
                let found = if again { self.finished_before().await? } else { None };
                self.forget();
                if let Some(md) = found {
                    return Ok(md);
                }
                // Else the session lapsed, or holds other than was kept: the file goes again, in a new one.
                let e = self.refused("upload_session/finish", &a);
                return Err(crate::send_again(err(e.kind(), e.to_string())).set_persistent());
            }
            Err(a) => {
                self.forget();
                return Err(self.refused("upload_session/finish", &a));
            }
        };
        self.forget();
        let (size, hash) = (answer["size"].as_u64(), answer["content_hash"].as_str());
        let ours = self.hash.hex();
        if size != Some(self.offset) || hash.is_some_and(|h| h != ours) {
            return Err(err(
                ErrorKind::Unexpected,
                format!(
                    "Dropbox holds {} bytes of {} with content hash {} after the upload, not {} bytes with {ours}; \
                     copy it again",
                    size.map_or("?".into(), |s| s.to_string()),
                    self.abs,
                    hash.unwrap_or("?"),
                    self.offset
                ),
            ));
        }
        let mut md = MetadataBuilder::file(self.offset);
        md.user_metadata([(REUSED_KEY.to_owned(), self.reused.to_string())]);
        Ok(md.build())
    }

    async fn abort(&mut self) -> Result<()> {
        // An unfinished session holds nothing visible, and Dropbox lets it lapse (after a week); a kept one stays
        // for the next run to take up.
        self.session = None;
        self.first = None;
        Ok(())
    }
}
