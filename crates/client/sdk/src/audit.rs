//! The audit log: `client.audit().list(AuditQuery { .. })`, `client.audit().verify(..)`.

use cloudsync_types::WorkspaceId;
use cloudsync_types::api::{AuditListParams, AuditPage, AuditVerifyReport};
use reqwest::Method;
use time::OffsetDateTime;

use crate::{Client, Error};

/// Which audit rows to read, newest first. `Default` reads the newest page of the caller's account events.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// A workspace's log (Admin or Owner); `None`: account events (all of them for a server administrator,
    /// the caller's own otherwise).
    pub workspace: Option<WorkspaceId>,
    /// Only rows at or after this time.
    pub start_date: Option<OffsetDateTime>,
    /// Only rows before this time.
    pub end_date: Option<OffsetDateTime>,
    /// Only these events (`auth.login`, `file.access`; a trailing `*` matches a group, as in `file.*`).
    pub events: Vec<String>,
    /// Only rows by the account with this email.
    pub actor: Option<String>,
    /// Paging cursor: [`AuditPage::next_before`] of the previous page.
    pub before: Option<u64>,
    /// Page size (server default 100, at most 1000).
    pub limit: Option<u32>,
}

/// Audit endpoints; see [`Client::audit`].
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    pub(crate) client: &'a Client,
}

impl Audit<'_> {
    /// `GET /workspaces/{ws}/audit` or `GET /audit`: one page of rows, newest first. Takes the query by value
    /// or by reference: `list(AuditQuery { workspace: Some(ws), ..Default::default() })`.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Forbidden`] below Admin in the workspace, [`crate::ErrorKind::BadRequest`] for an
    /// unknown event name or a bad range, and any transport failure.
    pub async fn list(&self, q: impl std::borrow::Borrow<AuditQuery>) -> Result<AuditPage, Error> {
        let q = q.borrow();
        let params = AuditListParams {
            since: q.start_date,
            until: q.end_date,
            events: (!q.events.is_empty()).then(|| q.events.join(",")),
            actor: q.actor.clone(),
            before: q.before,
            limit: q.limit,
        };
        let path = q.workspace.map_or_else(|| "/audit".to_owned(), |ws| format!("/workspaces/{ws}/audit"));
        self.client.call(self.client.request(Method::GET, &path)?.query(&params)).await
    }

    /// `GET /workspaces/{ws}/audit/verify` or `GET /audit/verify` (server administrators): re-hashes the whole
    /// chain on the server and reports the first broken row.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Forbidden`] without the right role, and any transport failure.
    pub async fn verify(&self, workspace: Option<WorkspaceId>) -> Result<AuditVerifyReport, Error> {
        let path = workspace.map_or_else(|| "/audit/verify".to_owned(), |ws| format!("/workspaces/{ws}/audit/verify"));
        self.client.call(self.client.request(Method::GET, &path)?).await
    }
}
