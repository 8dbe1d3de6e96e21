//! pCloud uploads that stream, as an OpenDAL layer over OpenDAL's pCloud service (whose writer holds a whole
//! file in memory and sends it in one request). A file goes in one `uploadfile` `PUT` whose body is fed piece
//! by piece as the copy reads it (streamed.rs), with its `Content-Length`.
//!
//! The request goes through the connection's transport, which signs it with the access token and adds
//! `nopartial=1` (oauth.rs): pCloud then keeps nothing of an upload that broke off, and replaces an existing
//! file (keeping the old one as a revision) only once the new one has arrived whole. Folders above the file are
//! made first, through OpenDAL's service.

use std::sync::Arc;

use http::{Request, StatusCode};
use opendal::raw::Servicer;
use opendal::{Buffer, ErrorKind, Metadata, MetadataBuilder, OperationContext};

use crate::oauth::PLACEHOLDER;
use crate::streamed::{Opened, Target, err};

type Result<T> = opendal::Result<T>;

/// The layer: pCloud's service with streamed uploads, to the API at `api` (`https://api.pcloud.com`) under the
/// connection's `root`.
pub(crate) fn layer(api: &str, root: &str) -> crate::WriteLayer<crate::streamed::StreamWriter<Upload>> {
    let settings =
        Arc::new(Settings { api: api.trim_end_matches('/').to_owned(), root: opendal::raw::normalize_root(root) });
    crate::streamed::layer("PcloudStreamedUpload", move |inner| Upload { inner, settings: settings.clone() })
}

#[derive(Debug)]
struct Settings {
    /// The API's address.
    api: String,
    /// The connection's root, as OpenDAL's service normalizes it.
    root: String,
}

/// One streamed `uploadfile`.
pub(crate) struct Upload {
    inner: Servicer,
    settings: Arc<Settings>,
}

impl Target for Upload {
    type State = ();

    async fn open(&self, ctx: &OperationContext, path: &str, _: Option<u64>) -> Result<Opened<()>> {
        let abs = opendal::raw::build_abs_path(&self.settings.root, path);
        let (folder, name) = match abs.trim_end_matches('/').rsplit_once('/') {
            Some((folder, name)) => (folder.to_owned(), name.to_owned()),
            None => (String::new(), abs.clone()),
        };
        if name.is_empty() {
            return Err(err(ErrorKind::IsADirectory, format!("{path} names a folder, not a file")));
        }
        crate::streamed::folders_above(&self.inner, ctx, path).await?;
        // The login parameters are placeholders the transport takes out, signing the request with the token.
        let url = format!(
            "{}/uploadfile?path=/{}&filename={}&username={PLACEHOLDER}&password={PLACEHOLDER}",
            self.settings.api,
            opendal::raw::percent_encode_path(&folder),
            opendal::raw::percent_encode_path(&name),
        );
        Opened::bare(Request::put(url))
    }

    async fn finish(
        &self,
        _: &OperationContext,
        path: &str,
        (): (),
        answer: http::Response<Buffer>,
    ) -> Result<Metadata> {
        let doing = format!("cannot write {path}");
        let status = answer.status();
        if status != StatusCode::OK {
            let e = err(ErrorKind::Unexpected, format!("{doing}: pCloud answered {status}"));
            // pCloud's own trouble or a push-back (the pace, if any, has already slowed down): worth sending
            // the file again.
            return Err(if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                crate::send_again(e)
            } else {
                e
            });
        }
        let body: serde_json::Value = serde_json::from_slice(&answer.into_body().to_bytes())
            .map_err(|e| err(ErrorKind::Unexpected, format!("{doing}: pCloud's answer is not JSON: {e}")))?;
        let code = body.get("result").and_then(serde_json::Value::as_i64).unwrap_or(-1);
        let said = body.get("error").and_then(serde_json::Value::as_str).unwrap_or("no reason given");
        match code {
            0 => {
                let size = body
                    .pointer("/metadata/0/size")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| err(ErrorKind::Unexpected, format!("{doing}: pCloud's answer names no file")))?;
                Ok(MetadataBuilder::file(size).build())
            }
            2003 => Err(err(ErrorKind::PermissionDenied, format!("{doing}: pCloud refused access ({code}: {said})"))),
            2008 => Err(err(ErrorKind::Unexpected, format!("{doing}: the pCloud account is full ({code}: {said})"))),
            // pCloud's internal errors (5000 "try again later", 5001 upload error).
            5000..=5999 => {
                Err(crate::send_again(err(ErrorKind::Unexpected, format!("{doing}: pCloud answered {code}: {said}"))))
            }
            _ => Err(err(ErrorKind::Unexpected, format!("{doing}: pCloud answered {code}: {said}"))),
        }
    }

    async fn abandon(&self, _: &OperationContext, (): ()) {
        // With nopartial, pCloud keeps nothing of an upload that broke off.
    }
}
