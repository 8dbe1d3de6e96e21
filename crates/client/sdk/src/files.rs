//! File endpoints of one workspace: content-addressed chunks (ask which are missing, upload them, fetch
//! them), commits that make a new version visible, listing, versions, trash and the change journal. Upload
//! is two-phase — chunks first, then a commit naming them — so an interrupted upload never leaves a
//! half-written file visible and re-uploads skip chunks the server already holds. A sync engine moving many
//! files uses the batch forms: [`Files::commit_batch`], [`Files::manifests`] and [`Files::fetch_chunks`].

use bytes::Bytes;
use cloudsync_types::api::{
    ChangeList, ChunkSignature, ChunkSignaturesRequest, ChunkSignaturesResponse, CommitBatchResponse, CommitRequest,
    CommitResult, DeleteRequest, DeleteResponse, DeltaBaseRef, FetchChunksRequest, FileEntry, FileList,
    MAX_BATCH_COMMITS, MAX_BATCH_MANIFESTS, MAX_FETCH_CHUNKS, MAX_JSON_BODY, MAX_MISSING_QUERY, MAX_SIGNATURE_BASES,
    ManifestRef, ManifestsRequest, ManifestsResponse, MissingChunksRequest, MissingChunksResponse, RestoreRequest,
    TrashEntry, UploadChunksResponse, UploadDeltasResponse, VersionInfo, VersionManifest,
};
use cloudsync_types::frame::delta_payload;
use cloudsync_types::{ChunkId, MAX_CHUNK_SIZE, WorkspaceId, WsPath};
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};

use crate::{ChunkStream, Client, Error, ErrorKind};

/// Page size [`Files::list_all`] asks for.
const LIST_ALL_PAGE: u32 = 1000;
/// Body size past which [`Files::commit_batch`] starts another request. Half of [`MAX_JSON_BODY`] leaves a
/// wide margin under the server's cap (for the `{"commits": ...}` wrapper as well), so a request of several
/// commits is never refused for its size; only a single commit too large on its own can be.
const COMMIT_BATCH_BYTES: usize = MAX_JSON_BODY / 2;
/// Manifest requests [`Files::manifests`] keeps in flight.
const MANIFESTS_IN_FLIGHT: usize = 3;

/// One chunk to upload as a delta: applying `delta` to the `bases` concatenated rebuilds chunk `id`.
#[derive(Debug, Clone)]
pub struct ChunkDelta {
    /// The chunk to rebuild.
    pub id: ChunkId,
    /// Base chunks, as a [`ChunkSignature`] named them.
    pub bases: Vec<ChunkId>,
    /// librsync delta against the signature of the bases.
    pub delta: Vec<u8>,
}

/// `/workspaces/{ws}/...` file endpoints; see [`Client::files`].
#[derive(Debug, Clone, Copy)]
pub struct Files<'a> {
    pub(crate) client: &'a Client,
    pub(crate) ws: WorkspaceId,
}

impl Files<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/workspaces/{}{rest}", self.ws)
    }

    /// `POST /workspaces/{ws}/chunks/missing`: which of `ids` the workspace does not hold yet. Asks in
    /// batches of [`MAX_MISSING_QUERY`]; an empty `ids` makes no request.
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] below Editor, and any transport failure.
    pub async fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>, Error> {
        let mut missing = Vec::new();
        for batch in ids.chunks(MAX_MISSING_QUERY) {
            let req = MissingChunksRequest { ids: batch.to_vec() };
            let rb = self.client.request(Method::POST, &self.path("/chunks/missing"))?.json(&req);
            let resp: MissingChunksResponse = self.client.call(rb).await?;
            missing.extend(resp.missing);
        }
        Ok(missing)
    }

    /// `POST /workspaces/{ws}/chunks`: uploads chunks as one framed `application/octet-stream` body (see
    /// [`crate::frame_header`]); payloads are streamed, not copied. An empty `frames` makes no request.
    ///
    /// # Errors
    /// [`ErrorKind::TooLarge`] for a chunk over [`MAX_CHUNK_SIZE`] (checked before sending) or a body the
    /// server refuses, [`ErrorKind::BadRequest`] when an id does not match its content, and any transport
    /// failure.
    pub async fn upload_chunks(&self, frames: Vec<(ChunkId, Bytes)>) -> Result<UploadChunksResponse, Error> {
        if frames.is_empty() {
            return Ok(UploadChunksResponse { stored: 0, already_present: 0 });
        }
        let (len, body) = crate::frames::upload_body(frames)?;
        let rb = self
            .client
            .request(Method::POST, &self.path("/chunks"))?
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        self.client.call(rb).await
    }

    /// `POST /workspaces/{ws}/chunks/signatures`: for new chunks about to replace bytes of a file's current
    /// version, the server's choice of base chunks and their rsync signature (see [`Files::upload_deltas`]).
    /// Asks in batches of [`MAX_SIGNATURE_BASES`]; answers in order, `None` where there is no base.
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] below Editor, and any transport failure.
    pub async fn chunk_signatures(&self, bases: &[DeltaBaseRef]) -> Result<Vec<Option<ChunkSignature>>, Error> {
        let mut out = Vec::with_capacity(bases.len());
        for batch in bases.chunks(MAX_SIGNATURE_BASES) {
            let req = ChunkSignaturesRequest { bases: batch.to_vec() };
            let rb = self.client.request(Method::POST, &self.path("/chunks/signatures"))?.json(&req);
            let resp: ChunkSignaturesResponse = self.client.call(rb).await?;
            out.extend(same_count(resp.signatures, batch.len(), "signatures")?);
        }
        Ok(out)
    }

    /// `POST /workspaces/{ws}/chunks/deltas`: uploads chunks as librsync deltas against base chunks the
    /// workspace holds (as chosen by [`Files::chunk_signatures`]). The server rebuilds each chunk and stores it
    /// only if it matches its id; the others come back in `failed`, to be uploaded whole. An empty `deltas`
    /// makes no request.
    ///
    /// # Errors
    /// [`ErrorKind::TooLarge`] for a delta over [`MAX_CHUNK_SIZE`] or with more than
    /// [`cloudsync_types::api::MAX_DELTA_BASES`] bases (checked before sending), [`ErrorKind::NotFound`] when
    /// the workspace does not hold a base, and any transport failure.
    pub async fn upload_deltas(&self, deltas: Vec<ChunkDelta>) -> Result<UploadDeltasResponse, Error> {
        if deltas.is_empty() {
            return Ok(UploadDeltasResponse { stored: 0, already_present: 0, failed: Vec::new() });
        }
        let mut frames = Vec::with_capacity(deltas.len());
        for d in deltas {
            let payload = delta_payload(&d.bases, &d.delta)
                .map_err(|e| Error::new(ErrorKind::TooLarge, format!("chunk {}: {e}", d.id)))?;
            frames.push((d.id, Bytes::from(payload)));
        }
        let (len, body) = crate::frames::upload_body(frames)?;
        let rb = self
            .client
            .request(Method::POST, &self.path("/chunks/deltas"))?
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(body));
        self.client.call(rb).await
    }

    /// `GET /workspaces/{ws}/chunks/{id}`: one chunk's plaintext.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when the workspace does not hold it, [`ErrorKind::TooLarge`] when the server
    /// sends more than [`MAX_CHUNK_SIZE`], and any transport failure.
    pub async fn get_chunk(&self, id: ChunkId) -> Result<Bytes, Error> {
        let rb = self.client.request(Method::GET, &self.path(&format!("/chunks/{}", id.to_hex())))?;
        let mut resp = self.client.send(rb).await?;
        let body = self.client.read_limited(&mut resp, MAX_CHUNK_SIZE).await?;
        Ok(Bytes::from(body))
    }

    /// `POST /workspaces/{ws}/chunks/fetch`: many chunks' plaintext in one streamed answer, in the order of
    /// `ids` (a repeated id comes again). Read them with [`ChunkStream::next`], which checks that each frame
    /// is the one asked for at its place; checking content against the keyed ids is the caller's job. An empty
    /// `ids` makes no request.
    ///
    /// # Errors
    /// [`ErrorKind::TooLarge`] for more than [`MAX_FETCH_CHUNKS`] ids (checked before sending),
    /// [`ErrorKind::NotFound`] when the workspace does not hold some of them (nothing is sent then; the
    /// message names them), and any transport failure.
    pub async fn fetch_chunks(&self, ids: &[ChunkId]) -> Result<ChunkStream, Error> {
        if ids.len() > MAX_FETCH_CHUNKS {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("fetch at most {MAX_FETCH_CHUNKS} chunks per request; got {}", ids.len()),
            ));
        }
        if ids.is_empty() {
            return Ok(ChunkStream::new(Vec::new(), futures_util::stream::empty().boxed()));
        }
        let req = FetchChunksRequest { ids: ids.to_vec() };
        let resp = self.client.send(self.client.request(Method::POST, &self.path("/chunks/fetch"))?.json(&req)).await?;
        let client = self.client.clone();
        let body = resp.bytes_stream().map(move |piece| piece.map_err(|e| client.transport_error(e)));
        Ok(ChunkStream::new(req.ids, body.boxed()))
    }

    /// `POST /workspaces/{ws}/files/commit`: makes a new version of a file visible.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] for a stale `base_version` (code `conflict`) or unknown chunks (code
    /// `missing_chunks`), [`ErrorKind::Forbidden`] below Editor, and any transport failure.
    pub async fn commit(&self, req: &CommitRequest) -> Result<FileEntry, Error> {
        self.client.call(self.client.request(Method::POST, &self.path("/files/commit"))?.json(req)).await
    }

    /// `POST /workspaces/{ws}/files/commit-batch`: many commits, one result each in the same order. Each
    /// commit succeeds or fails on its own: a stale base is that result's `error` with code `conflict` (nothing
    /// overwritten), unknown chunks `missing_chunks`, while the other commits go ahead. Up to
    /// [`MAX_BATCH_COMMITS`] commits, and about 16 MiB of manifests, go in one request (one server
    /// transaction); more are sent as several requests in order. An empty `commits` makes no request.
    ///
    /// # Errors
    /// Only failures of a whole request: [`ErrorKind::Forbidden`] below Editor, [`ErrorKind::TooLarge`] for a
    /// body the server refuses, [`ErrorKind::Decode`] when the server answers a different number of results,
    /// and any transport failure. Requests sent before a failing one stay committed.
    pub async fn commit_batch(&self, commits: &[CommitRequest]) -> Result<Vec<CommitResult>, Error> {
        let mut out = Vec::with_capacity(commits.len());
        let mut body = Vec::new();
        let mut count = 0;
        for (i, commit) in commits.iter().enumerate() {
            let json = serde_json::to_vec(commit)
                .map_err(|e| Error::new(ErrorKind::BadRequest, format!("cannot encode a commit: {e}")))?;
            if count > 0 && body.len() + json.len() > COMMIT_BATCH_BYTES {
                out.extend(self.send_commit_batch(&mut body, count).await?);
                count = 0;
            }
            body.push(if count == 0 { b'[' } else { b',' });
            body.extend_from_slice(&json);
            count += 1;
            if count == MAX_BATCH_COMMITS || i + 1 == commits.len() {
                out.extend(self.send_commit_batch(&mut body, count).await?);
                count = 0;
            }
        }
        Ok(out)
    }

    /// Sends the `count` commits encoded in `body` (a JSON array without its closing bracket) and empties it.
    async fn send_commit_batch(&self, body: &mut Vec<u8>, count: usize) -> Result<Vec<CommitResult>, Error> {
        let mut json = Vec::with_capacity(body.len() + 16);
        json.extend_from_slice(b"{\"commits\":");
        json.append(body);
        json.extend_from_slice(b"]}");
        let rb = self
            .client
            .request(Method::POST, &self.path("/files/commit-batch"))?
            .header(CONTENT_TYPE, "application/json")
            .body(json);
        let resp: CommitBatchResponse = self.client.call(rb).await?;
        same_count(resp.results, count, "commit results")
    }

    /// `POST /workspaces/{ws}/files/manifests`: the manifests of many live files (each at `version`, or the
    /// current one), in the order asked; `None` where no live file is at that path or it has no such version.
    /// Up to [`MAX_BATCH_MANIFESTS`] go in one request; more are sent as several. An empty `files` makes no
    /// request.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for non-members, [`ErrorKind::Decode`] when the server answers a different
    /// number of manifests, and any transport failure.
    pub async fn manifests(&self, files: &[ManifestRef]) -> Result<Vec<Option<VersionManifest>>, Error> {
        // A few requests in flight (answers kept in order): the server reads them on separate connections.
        let mut answers = futures_util::stream::iter(files.chunks(MAX_BATCH_MANIFESTS))
            .map(|batch| async move {
                let req = ManifestsRequest { files: batch.to_vec() };
                let rb = self.client.request(Method::POST, &self.path("/files/manifests"))?.json(&req);
                let resp: ManifestsResponse = self.client.call(rb).await?;
                same_count(resp.manifests, batch.len(), "manifests")
            })
            .buffered(MANIFESTS_IN_FLIGHT);
        let mut out = Vec::with_capacity(files.len());
        while let Some(answer) = answers.next().await {
            out.extend(answer?);
        }
        Ok(out)
    }

    /// `GET /workspaces/{ws}/files`: one page of live files below `prefix`, in path order, starting after
    /// the path `after`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for non-members, [`ErrorKind::BadRequest`] for a bad cursor, and any
    /// transport failure.
    pub async fn list(&self, prefix: &WsPath, after: Option<&str>, limit: u32) -> Result<FileList, Error> {
        let mut query = vec![("prefix", prefix.as_str().to_owned()), ("limit", limit.to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        self.client.call(self.client.request(Method::GET, &self.path("/files"))?.query(&query)).await
    }

    /// Every live file below `prefix`, following the pages of [`Files::list`].
    ///
    /// # Errors
    /// As [`Files::list`]; [`ErrorKind::Decode`] when the server repeats a page cursor.
    pub async fn list_all(&self, prefix: &WsPath) -> Result<Vec<FileEntry>, Error> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list(prefix, after.as_deref(), LIST_ALL_PAGE).await?;
            out.extend(page.files);
            match page.next_after {
                None => return Ok(out),
                Some(next) if after.as_deref() == Some(next.as_str()) => {
                    return Err(Error::new(
                        ErrorKind::Decode,
                        "the server's file listing did not advance (a page cursor repeated); retry, and report it \
                         if it persists",
                    ));
                }
                Some(next) => after = Some(next),
            }
        }
    }

    /// `GET /workspaces/{ws}/files/manifest`: a version's chunk list (default: the current version).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown path or version, and any transport failure.
    pub async fn manifest(&self, path: &WsPath, version: Option<u64>) -> Result<VersionManifest, Error> {
        let rb = self.client.request(Method::GET, &self.path("/files/manifest"))?.query(&path_query(path, version));
        self.client.call(rb).await
    }

    /// `GET /workspaces/{ws}/files/content`: streams a version's content (default: the current version).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown path or version, and any transport failure before the body
    /// starts; failures while reading come from [`Download`].
    pub async fn content(&self, path: &WsPath, version: Option<u64>) -> Result<Download, Error> {
        let rb = self.client.request(Method::GET, &self.path("/files/content"))?.query(&path_query(path, version));
        let resp = self.client.send(rb).await?;
        Ok(Download { client: self.client.clone(), resp })
    }

    /// `GET /workspaces/{ws}/files/versions`: every version of a file, newest first as the server sends them.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown path, and any transport failure.
    pub async fn versions(&self, path: &WsPath) -> Result<Vec<VersionInfo>, Error> {
        let rb = self.client.request(Method::GET, &self.path("/files/versions"))?.query(&path_query(path, None));
        self.client.call(rb).await
    }

    /// `POST /workspaces/{ws}/files/delete`: moves a file, or every file below a folder, to the trash.
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] below Admin, [`ErrorKind::NotFound`], and any transport failure.
    pub async fn delete(&self, path: &WsPath) -> Result<DeleteResponse, Error> {
        let req = DeleteRequest { path: path.clone() };
        self.client.call(self.client.request(Method::POST, &self.path("/files/delete"))?.json(&req)).await
    }

    /// `POST /workspaces/{ws}/files/restore`: brings a file back from the trash or makes an old version
    /// current (as a new version).
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] below Admin, [`ErrorKind::NotFound`], [`ErrorKind::Conflict`] when a live
    /// file took the path, and any transport failure.
    pub async fn restore(&self, req: &RestoreRequest) -> Result<FileEntry, Error> {
        self.client.call(self.client.request(Method::POST, &self.path("/files/restore"))?.json(req)).await
    }

    /// `GET /workspaces/{ws}/trash`: deleted files that can still be restored.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for non-members, and any transport failure.
    pub async fn trash(&self) -> Result<Vec<TrashEntry>, Error> {
        self.client.call(self.client.request(Method::GET, &self.path("/trash"))?).await
    }

    /// `GET /workspaces/{ws}/changes`: up to `limit` journal entries after sequence number `since`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for non-members, and any transport failure.
    pub async fn changes(&self, since: u64, limit: u32) -> Result<ChangeList, Error> {
        let query = [("since", since.to_string()), ("limit", limit.to_string())];
        self.client.call(self.client.request(Method::GET, &self.path("/changes"))?.query(&query)).await
    }
}

/// `items` if the server answered one per request item.
fn same_count<T>(items: Vec<T>, asked: usize, what: &str) -> Result<Vec<T>, Error> {
    if items.len() == asked {
        Ok(items)
    } else {
        Err(Error::new(
            ErrorKind::Decode,
            format!(
                "the server answered {} {what} for {asked} asked; the server may run a different CloudSync version",
                items.len()
            ),
        ))
    }
}

fn path_query(path: &WsPath, version: Option<u64>) -> Vec<(&'static str, String)> {
    let mut query = vec![("path", path.as_str().to_owned())];
    if let Some(v) = version {
        query.push(("version", v.to_string()));
    }
    query
}

/// A file download in progress: read it piece by piece with [`Download::chunk`], or as a stream with
/// [`Download::into_stream`]. Nothing is buffered beyond what the connection delivers.
#[derive(Debug)]
pub struct Download {
    client: Client,
    resp: reqwest::Response,
}

impl Download {
    /// The content length the server announced, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.resp.content_length()
    }

    /// The next piece of content, or `None` at the end.
    ///
    /// # Errors
    /// [`ErrorKind::Network`] when the connection breaks.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        self.resp.chunk().await.map_err(|e| self.client.transport_error(e))
    }

    /// The content as a stream of pieces.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
        let client = self.client;
        self.resp.bytes_stream().map(move |piece| piece.map_err(|e| client.transport_error(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_query_includes_version_only_when_given() {
        let p = WsPath::parse("a b/c&d.txt").expect("path");
        assert_eq!(path_query(&p, None), vec![("path", "a b/c&d.txt".to_owned())]);
        assert_eq!(path_query(&p, Some(3))[1], ("version", "3".to_owned()));
    }
}
