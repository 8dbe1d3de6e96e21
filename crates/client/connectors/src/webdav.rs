//! WebDAV uploads that stream, as an OpenDAL layer over OpenDAL's WebDAV service (whose writer holds a whole
//! file in memory and sends it in one request). A file goes in one `PUT` whose body is fed piece by piece as
//! the copy reads it (streamed.rs), with its `Content-Length` when the copy hands in the file's size. Without
//! it the body goes chunked.
//!
//! The request goes through the connection's transport (its TLS settings and its pace), with the connection's
//! basic authentication. Folders above the file are made first, through OpenDAL's service.

use std::fmt::{self, Debug};
use std::sync::Arc;

use base64::Engine as _;
use http::{Request, StatusCode, header};
use opendal::raw::Servicer;
use opendal::{Buffer, ErrorKind, Metadata, MetadataBuilder, OperationContext};
use zeroize::Zeroizing;

use crate::streamed::{Opened, Target, err};

type Result<T> = opendal::Result<T>;

/// What the layer needs.
pub(crate) struct Settings {
    /// The endpoint as configured (`https://host/remote.php/dav/files/u`).
    pub endpoint: String,
    /// The connection's root.
    pub root: String,
    /// User and password, for basic authentication.
    pub user: Option<(String, Zeroizing<String>)>,
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
pub(crate) fn layer(mut settings: Settings) -> crate::WriteLayer<crate::streamed::StreamWriter<Put>> {
    settings.root = opendal::raw::normalize_root(&settings.root);
    // The basic authentication header, made once (base64 is always a valid header value).
    let auth = settings.user.as_ref().and_then(|(user, password)| {
        let pair = Zeroizing::new(format!("{user}:{}", password.as_str()));
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
        let mut value = http::HeaderValue::from_str(&Zeroizing::new(format!("Basic {}", encoded.as_str()))).ok()?;
        value.set_sensitive(true);
        Some(value)
    });
    let settings = Arc::new(settings);
    crate::streamed::layer("WebdavStreamedPut", move |inner| Put {
        inner,
        settings: settings.clone(),
        auth: auth.clone(),
    })
}

/// One streamed `PUT`.
pub(crate) struct Put {
    inner: Servicer,
    settings: Arc<Settings>,
    auth: Option<http::HeaderValue>,
}

impl Put {
    /// The file's address, formed as OpenDAL's WebDAV service forms it (so a later MOVE names the same one).
    fn url(&self, path: &str) -> String {
        let abs = opendal::raw::build_rooted_abs_path(&self.settings.root, path);
        format!("{}{}", self.settings.endpoint, opendal::raw::percent_encode_path(&abs))
    }
}

impl Target for Put {
    type State = ();

    async fn open(&self, ctx: &OperationContext, path: &str, _: Option<u64>) -> Result<Opened<()>> {
        crate::streamed::folders_above(&self.inner, ctx, path).await?;
        let mut req = Request::put(self.url(path));
        if let Some(auth) = &self.auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        Opened::bare(req)
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
        match status {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => Ok(MetadataBuilder::unknown().build()),
            // (The pace, if any, has already slowed down.)
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
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

    async fn abandon(&self, _: &OperationContext, (): ()) {
        // What arrived of a cut-off PUT went to a temporary name, which the copy removes.
    }
}
