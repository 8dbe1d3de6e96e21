//! What the unit tests of this crate share.

use std::path::Path;
use std::sync::Arc;

use cloudsync_blob::BlobStore;
use cloudsync_crypto::SecretKey;
use cloudsync_store_sqlite::SqliteStore;

use crate::{Actor, Core, ManualClock};

/// Where the test clock starts (Unix milliseconds).
pub(crate) const START_MS: i64 = 1_700_000_000_000;
/// The password of the test account.
pub(crate) const PASSWORD: &str = "correct horse battery";

/// A core on SQLite and the local disk under `dir`, its clock, and account a@example.com with a session opened
/// at [`START_MS`].
pub(crate) async fn core_with_account(dir: &Path) -> (Core, Arc<ManualClock>, Actor) {
    let master = SecretKey::generate();
    let store = SqliteStore::open(&dir.join("meta.db"), crate::audit_key(&master)).await.expect("store");
    let blobs = BlobStore::local(&dir.join("chunks")).expect("blobs");
    let clock = Arc::new(ManualClock::new(START_MS));
    let core = Core::new(Arc::new(store), blobs, master, clock.clone());
    let user = core.create_user("a@example.com", PASSWORD, false, None).await.expect("user");
    let actor = Actor {
        user_id: user.id,
        email: user.email,
        is_admin: false,
        session_id: cloudsync_types::SessionId::new(),
        session_created_ms: START_MS,
        session_mfa: false,
        ip: "127.0.0.1".into(),
        api_key: None,
    };
    (core, clock, actor)
}

/// [`core_with_account`] with a workspace "W" the account edits: the core, its clock, the access and the
/// workspace's chunk-id key.
pub(crate) async fn editor_workspace(dir: &Path) -> (Core, Arc<ManualClock>, crate::Access, SecretKey) {
    let (core, clock, actor) = core_with_account(dir).await;
    let ws = core.create_workspace(&actor, "W", false).await.expect("workspace");
    let access = core.access(actor, ws.id, cloudsync_types::Role::Editor).await.expect("access");
    let (_, chunk_key) = core.keys(ws.id).await.expect("keys");
    (core, clock, access, chunk_key)
}

/// Files below `dir` (folders not counted).
pub(crate) fn files_below(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map_or(0, |d| d.flatten().map(|e| if e.path().is_dir() { files_below(&e.path()) } else { 1 }).sum())
}

/// Settings that only turn the MFA requirement on or off.
pub(crate) fn mfa_on(on: bool) -> cloudsync_types::api::UpdateSettings {
    cloudsync_types::api::UpdateSettings { require_mfa: Some(on), ..Default::default() }
}
