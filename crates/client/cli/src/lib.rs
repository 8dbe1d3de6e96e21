//! The `cloudsync` binary's library half: argument definitions, the client commands and the embedded server
//! (`cloudsync server ...`). It is a library so the test kit can start the same server in-process.

pub mod args;
pub mod client;
pub mod server;
