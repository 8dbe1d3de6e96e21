//! Typed async client for the CloudSync server's HTTP API (`/api/v1`, JSON over HTTPS, TLS 1.3 only).
//!
//! The CLI and the sync engine talk to the server only through this crate, so the wire format
//! ([`cloudsync_types::api`]), TLS trust and error mapping are decided once, here:
//!
//! - **Trust** ([`Trust`]): self-hosted servers mostly run with self-signed certificates, so the usual mode
//!   is to pin the certificate's SHA-256 fingerprint, learnt on first login with [`probe_fingerprint`] and
//!   confirmed by the user. A changed certificate then fails loudly with
//!   [`ErrorKind::CertificateMismatch`] instead of silently trusting whoever answers.
//! - **Errors** ([`Error`]): one type with a coarse [`ErrorKind`] for control flow and the server's own
//!   actionable message for people.
//! - **Endpoints** are grouped as borrowed views of a cheap-to-clone [`Client`]: [`Client::auth`],
//!   [`Client::workspaces`], [`Client::files`], ...
//!
//! ```no_run
//! use cloudsync_sdk::{Client, Trust, parse_fingerprint};
//! use cloudsync_sdk::types::api::LoginRequest;
//!
//! # async fn run() -> Result<(), cloudsync_sdk::Error> {
//! let pin = parse_fingerprint("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")?;
//! let client = Client::new("https://127.0.0.1:8443", Trust::Fingerprint(pin))?;
//! let login = client
//!     .auth()
//!     .login(&LoginRequest {
//!         email: "alice@example.org".into(),
//!         password: "correct horse battery staple".into(),
//!         device_name: "laptop".into(),
//!         totp: None,
//!     })
//!     .await?;
//! let client = client.with_token(login.token);
//! for ws in client.workspaces().list().await? {
//!     println!("{} {} ({})", ws.id, ws.name, ws.role);
//! }
//! # Ok(())
//! # }
//! ```

mod account;
mod apikeys;
mod audit;
mod client;
mod error;
mod files;
mod fingerprint;
mod frames;
mod mapping;
mod shares;
mod tls;
mod userkeys;
mod workspaces;

pub use account::{Auth, Devices, Users};
pub use apikeys::ApiKeys;
pub use audit::{Audit, AuditQuery};
pub use client::Client;
pub use cloudsync_types as types;
pub use cloudsync_types::frame::{FRAME_HEADER_LEN, frame_header};
pub use error::{Error, ErrorKind};
pub use files::{ChunkDelta, Download, Files};
pub use fingerprint::{certificate_fingerprint, format_fingerprint, parse_fingerprint};
pub use frames::ChunkStream;
pub use shares::Shares;
pub use tls::{Trust, probe_fingerprint, roots_from_file as ca_roots};
pub use userkeys::UserKeys;
pub use workspaces::{Members, Workspaces};
