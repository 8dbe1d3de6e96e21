//! Connections to storage accounts the user controls (S3 and R2, SFTP, FTP/FTPS, WebDAV, Synology's File
//! Station, Dropbox, OneDrive, pCloud), through Apache OpenDAL with retry, concurrency, timeout and logging
//! layers and a pace (request-rate and bandwidth caps that slow down when a remote pushes back), OAuth sign-in
//! and token handling of our own (`oauth`), a File Station service of our own for OpenDAL (`synology`); and listing, copying, mirroring and deleting between any two of them and local folders. Secrets
//! are never held here beyond the operator built with them: the caller keeps them in the OS credential store.

mod dropbox;
mod error;
mod ftp;
pub mod names;
pub mod oauth;
mod onedrive;
pub mod pace;
mod partial;
mod pcloud;
mod s3resume;
mod sftp;
mod spec;
mod streamed;
mod synology;
pub mod transfer;
mod upstate;
mod webdav;

pub use error::Error;
pub use pace::{Caps, Pace, PaceReport};
pub use sftp::{check_passphrase, key_needs_passphrase};
pub use spec::{Connection, Kind, Limits, MAX_NAME_LEN, check_name};
pub use synology::sign_out;
pub use transfer::{Entry, Listing, Location, Options, Summary};
pub use upstate::forget_all as forget_kept_uploads;

/// How an upload layer makes its writer: from the service below (for folders, or for its own writer), the
/// operation's context, the path and the write's arguments.
type MakeWriter<W> = dyn Fn(&opendal::raw::Servicer, &opendal::OperationContext, &str, opendal::raw::OpWrite) -> opendal::Result<W>
    + Send
    + Sync;

/// An OpenDAL layer that gives a service a writer of our own (the upload layers: dropbox.rs, onedrive.rs,
/// streamed.rs for WebDAV and pCloud, s3resume.rs); every other operation goes to the service unchanged.
pub(crate) struct WriteLayer<W> {
    name: &'static str,
    capability: fn(opendal::Capability) -> opendal::Capability,
    make: std::sync::Arc<MakeWriter<W>>,
}

impl<W> WriteLayer<W> {
    /// `name` for debugging output; `capability` adjusts the service's (what the writer adds); `make` makes
    /// each writer.
    pub(crate) fn new(
        name: &'static str,
        capability: fn(opendal::Capability) -> opendal::Capability,
        make: impl Fn(
            &opendal::raw::Servicer,
            &opendal::OperationContext,
            &str,
            opendal::raw::OpWrite,
        ) -> opendal::Result<W>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self { name, capability, make: std::sync::Arc::new(make) }
    }
}

impl<W> Clone for WriteLayer<W> {
    fn clone(&self) -> Self {
        Self { name: self.name, capability: self.capability, make: self.make.clone() }
    }
}

impl<W> std::fmt::Debug for WriteLayer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(self.name).finish_non_exhaustive()
    }
}

impl<W: opendal::raw::oio::Write + 'static> opendal::raw::Layer for WriteLayer<W> {
    fn apply_service(&self, inner: opendal::raw::Servicer) -> opendal::raw::Servicer {
        std::sync::Arc::new(WriteService { inner, layer: self.clone() })
    }
}

struct WriteService<W> {
    inner: opendal::raw::Servicer,
    layer: WriteLayer<W>,
}

impl<W> std::fmt::Debug for WriteService<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(self.layer.name).field("inner", &self.inner).finish()
    }
}

impl<W: opendal::raw::oio::Write + 'static> opendal::raw::Service for WriteService<W> {
    type Reader = opendal::raw::oio::Reader;
    type Writer = W;
    type Lister = opendal::raw::oio::Lister;
    type Deleter = opendal::raw::oio::Deleter;
    type Copier = opendal::raw::oio::Copier;
    type Composer = opendal::raw::oio::Composer;

    fn info(&self) -> opendal::raw::ServiceInfo {
        self.inner.info()
    }

    fn capability(&self) -> opendal::Capability {
        (self.layer.capability)(self.inner.capability())
    }

    fn write(
        &self,
        ctx: &opendal::OperationContext,
        path: &str,
        args: opendal::raw::OpWrite,
    ) -> opendal::Result<Self::Writer> {
        (self.layer.make)(&self.inner, ctx, path, args)
    }

    async fn create_dir(
        &self,
        ctx: &opendal::OperationContext,
        path: &str,
        args: opendal::raw::OpCreateDir,
    ) -> opendal::Result<opendal::raw::RpCreateDir> {
        self.inner.create_dir(ctx, path, args).await
    }

    async fn stat(
        &self,
        ctx: &opendal::OperationContext,
        path: &str,
        args: opendal::raw::OpStat,
    ) -> opendal::Result<opendal::raw::RpStat> {
        self.inner.stat(ctx, path, args).await
    }

    fn read(
        &self,
        ctx: &opendal::OperationContext,
        path: &str,
        args: opendal::raw::OpRead,
    ) -> opendal::Result<Self::Reader> {
        self.inner.read(ctx, path, args)
    }

    fn delete(&self, ctx: &opendal::OperationContext) -> opendal::Result<Self::Deleter> {
        self.inner.delete(ctx)
    }

    fn list(
        &self,
        ctx: &opendal::OperationContext,
        path: &str,
        args: opendal::raw::OpList,
    ) -> opendal::Result<Self::Lister> {
        self.inner.list(ctx, path, args)
    }

    fn copy(
        &self,
        ctx: &opendal::OperationContext,
        from: &str,
        to: &str,
        args: opendal::raw::OpCopy,
    ) -> opendal::Result<Self::Copier> {
        self.inner.copy(ctx, from, to, args)
    }

    async fn rename(
        &self,
        ctx: &opendal::OperationContext,
        from: &str,
        to: &str,
        args: opendal::raw::OpRename,
    ) -> opendal::Result<opendal::raw::RpRename> {
        self.inner.rename(ctx, from, to, args).await
    }

    async fn presign(
        &self,
        ctx: &opendal::OperationContext,
        path: &str,
        args: opendal::raw::OpPresign,
    ) -> opendal::Result<opendal::raw::RpPresign> {
        self.inner.presign(ctx, path, args).await
    }
}

/// The write metadata key a copy gives a file's length in, for the upload layers that stream (WebDAV, pCloud,
/// File Station, OneDrive) and S3's resumable uploads.
pub(crate) const LENGTH_KEY: &str = "cloudsync-length";

/// The file length a copy hands an upload layer as write metadata (`cloudsync-length`), if any.
pub(crate) fn length_of(args: &opendal::raw::OpWrite) -> opendal::Result<Option<u64>> {
    match args.user_metadata().and_then(|m| m.get(LENGTH_KEY)) {
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            opendal::Error::new(
                opendal::ErrorKind::Unexpected,
                format!("the {LENGTH_KEY} write metadata {v:?} is not a byte count"),
            )
        }),
        None => Ok(None),
    }
}

/// Marks an upload's failure as one that may pass: the file may be sent again whole (a streamed request or an
/// upload session cannot be taken up where it broke off, and OpenDAL's retries mark every error they give up on
/// alike).
#[derive(Debug)]
pub(crate) struct SendAgain;

impl std::fmt::Display for SendAgain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upload may be sent again")
    }
}

impl std::error::Error for SendAgain {}

/// `e` (an error of our own making, without a source), marked to be sent again.
pub(crate) fn send_again(e: opendal::Error) -> opendal::Error {
    e.set_temporary().set_source(SendAgain)
}

/// Whether `e` was marked to be sent again ([`send_again`]): it or an error under it is the [`SendAgain`]
/// marker.
pub(crate) fn is_send_again(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<SendAgain>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Sends `req` through the context's transport and reads its answer whole, refusing one of more than `max`
/// bytes with `too_big` as the error's message.
pub(crate) async fn exchange(
    ctx: &opendal::OperationContext,
    req: http::Request<opendal::Buffer>,
    max: usize,
    too_big: &str,
) -> opendal::Result<http::Response<opendal::Buffer>> {
    use opendal::raw::oio::ReadStream as _;
    let (parts, mut body) = ctx.http_transport().fetch(req).await?.into_parts();
    let mut pieces = Vec::new();
    let mut held = 0;
    loop {
        let piece = body.read().await?;
        if piece.is_empty() {
            break;
        }
        held += piece.len();
        if held > max {
            return Err(opendal::Error::new(opendal::ErrorKind::Unexpected, too_big));
        }
        pieces.extend(piece);
    }
    Ok(http::Response::from_parts(parts, opendal::Buffer::from(pieces)))
}

/// The operator for a service of our own (File Station, SFTP over russh, FTP): the service with OpenDAL's own
/// correctness layers, as `Operator::new` builds for its services.
pub(crate) fn own_operator<S: opendal::raw::Service>(service: S) -> opendal::Operator {
    opendal::Operator::new(Ready(Some(service))).expect("building a service that is ready cannot fail")
}

/// Hands a ready service to `Operator::new`.
struct Ready<S>(Option<S>);

impl<S> Default for Ready<S> {
    fn default() -> Self {
        Self(None)
    }
}

impl<S: opendal::raw::Service> opendal::Builder for Ready<S> {
    type Config = ();

    fn build(self) -> opendal::Result<impl opendal::raw::Service> {
        self.0.ok_or_else(|| opendal::Error::new(opendal::ErrorKind::ConfigInvalid, "the service is missing"))
    }
}

/// What a listing of `path` reads, for a service of our own: a folder (`a/b/`, or `""` for the root) and the
/// start its names must have (a prefix that is not a folder lists its folder, keeping the names that start with
/// it).
pub(crate) fn folder_and_prefix(path: &str) -> (String, String) {
    match path.rsplit_once('/') {
        _ if path == "/" => (String::new(), String::new()),
        Some((d, p)) => (format!("{d}/"), p.to_owned()),
        None => (String::new(), path.to_owned()),
    }
}
