//! Connections to storage accounts the user controls (S3 and R2, SFTP, FTP/FTPS, WebDAV, Synology's File
//! Station, Dropbox, OneDrive, pCloud), through Apache OpenDAL with retry, concurrency, timeout and logging
//! layers and a pace (request-rate and bandwidth caps that slow down when a remote pushes back), OAuth sign-in
//! and token handling of our own (`oauth`), a File Station service of our own for OpenDAL (`synology`); and listing, copying, mirroring and deleting between any two of them and local folders. Secrets
//! are never held here beyond the operator built with them: the caller keeps them in the OS credential store.

mod dropbox;
mod error;
pub mod names;
pub mod oauth;
pub mod pace;
mod sftp;
mod spec;
mod synology;
pub mod transfer;

pub use error::Error;
pub use pace::{Caps, Pace, PaceReport};
pub use sftp::{check_passphrase, key_needs_passphrase};
pub use spec::{Connection, Kind, Limits, MAX_NAME_LEN, check_name};
pub use synology::sign_out;
pub use transfer::{Entry, Listing, Location, Options, Summary};
