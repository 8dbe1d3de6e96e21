//! Workspace and membership endpoints, plus [`Workspaces::find_by_name`]: people refer to workspaces by
//! name on the command line, while the API addresses them by id.

use cloudsync_types::api::{
    AddMemberRequest, AppendE2eeLog, CreateWorkspaceRequest, E2eeAppended, E2eeKeys, E2eeLog, Member, SetRoleRequest,
    UpdateSettings, Workspace, WorkspaceKeys,
};
use cloudsync_types::{Role, UserId, WorkspaceId};
use reqwest::Method;

use crate::{Client, Error, ErrorKind};

/// `/workspaces` endpoints; see [`Client::workspaces`].
#[derive(Debug, Clone, Copy)]
pub struct Workspaces<'a> {
    pub(crate) client: &'a Client,
}

impl Workspaces<'_> {
    /// `GET /workspaces`: the workspaces the caller is a member of.
    ///
    /// # Errors
    /// [`ErrorKind::Unauthenticated`] without a valid token, and any transport failure.
    pub async fn list(&self) -> Result<Vec<Workspace>, Error> {
        self.client.call(self.client.request(Method::GET, "/workspaces")?).await
    }

    /// `POST /workspaces`: creates a workspace owned by the caller.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the caller already has a workspace of that name,
    /// [`ErrorKind::BadRequest`] for an invalid name, and any transport failure.
    pub async fn create(&self, req: &CreateWorkspaceRequest) -> Result<Workspace, Error> {
        self.client.call(self.client.request(Method::POST, "/workspaces")?.json(req)).await
    }

    /// `GET /workspaces/{ws}`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when it does not exist or the caller is not a member, and any transport failure.
    pub async fn get(&self, ws: WorkspaceId) -> Result<Workspace, Error> {
        self.client.call(self.client.request(Method::GET, &format!("/workspaces/{ws}"))?).await
    }

    /// `DELETE /workspaces/{ws}` (owners only).
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] below Owner, [`ErrorKind::NotFound`], and any transport failure.
    pub async fn delete(&self, ws: WorkspaceId) -> Result<(), Error> {
        self.client.call_empty(self.client.request(Method::DELETE, &format!("/workspaces/{ws}"))?).await
    }

    /// `PUT /workspaces/{ws}/settings` (owners only): changes the settings given, leaves the others. Takes the
    /// settings by value or by reference: `update_settings(ws, UpdateSettings { ip_allowlist: Some(..), ..
    /// Default::default() })`.
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] below Owner (or when requiring MFA without one's own), [`ErrorKind::NotFound`],
    /// and any transport failure.
    pub async fn update_settings(
        &self,
        ws: WorkspaceId,
        settings: impl std::borrow::Borrow<UpdateSettings>,
    ) -> Result<Workspace, Error> {
        let rb = self.client.request(Method::PUT, &format!("/workspaces/{ws}/settings"))?.json(settings.borrow());
        self.client.call(rb).await
    }

    /// `GET /workspaces/{ws}/keys`: the chunk-id key and chunking parameters a member's client needs.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for non-members, and any transport failure.
    pub async fn keys(&self, ws: WorkspaceId) -> Result<WorkspaceKeys, Error> {
        self.client.call(self.client.request(Method::GET, &format!("/workspaces/{ws}/keys"))?).await
    }

    /// `GET /workspaces/{ws}/e2ee/log?from=N`: one page of an end-to-end encrypted workspace's signed
    /// membership log (see [`Workspaces::e2ee_log_all`]). The entries are the server's word: replay and
    /// verify them (`cloudsync_crypto::e2ee_members::Membership::replay`).
    ///
    /// # Errors
    /// [`ErrorKind::BadRequest`] for a workspace without end-to-end encryption, and any transport failure.
    pub async fn e2ee_log(&self, ws: WorkspaceId, from: u64) -> Result<E2eeLog, Error> {
        self.client.call(self.client.request(Method::GET, &format!("/workspaces/{ws}/e2ee/log?from={from}"))?).await
    }

    /// The whole membership log, page by page (base64 entries, in order).
    ///
    /// # Errors
    /// As [`Workspaces::e2ee_log`]; [`ErrorKind::Server`] for a server whose pages do not line up.
    pub async fn e2ee_log_all(&self, ws: WorkspaceId) -> Result<Vec<String>, Error> {
        let mut all = Vec::new();
        loop {
            let page = self.e2ee_log(ws, all.len() as u64).await?;
            if page.from != all.len() as u64 {
                return Err(Error::new(ErrorKind::Server, "the server answered another page of the log than asked"));
            }
            let done = !page.more || page.entries.is_empty();
            all.extend(page.entries);
            if done {
                return Ok(all);
            }
        }
    }

    /// `POST /workspaces/{ws}/e2ee/log`: appends entries signed by the caller, with the wrapped keys they need.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] when the log grew since it was read (replay and try again),
    /// [`ErrorKind::BadRequest`] for entries or keys the server's replay refuses, and any transport failure.
    pub async fn append_e2ee_log(&self, ws: WorkspaceId, req: &AppendE2eeLog) -> Result<E2eeAppended, Error> {
        self.client.call(self.client.request(Method::POST, &format!("/workspaces/{ws}/e2ee/log"))?.json(req)).await
    }

    /// `GET /workspaces/{ws}/e2ee/keys`: the workspace keys wrapped to the caller, one record per epoch.
    ///
    /// # Errors
    /// [`ErrorKind::BadRequest`] for a workspace without end-to-end encryption, and any transport failure.
    pub async fn e2ee_keys(&self, ws: WorkspaceId) -> Result<E2eeKeys, Error> {
        self.client.call(self.client.request(Method::GET, &format!("/workspaces/{ws}/e2ee/keys"))?).await
    }

    /// Finds one of the caller's workspaces by exact name, or by id when `name` is a workspace id.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] when none matches, [`ErrorKind::Conflict`] when several share the name, and
    /// any failure of [`Workspaces::list`].
    pub async fn find_by_name(&self, name: &str) -> Result<Workspace, Error> {
        let all = self.list().await?;
        pick_workspace(all, name)
    }
}

/// The matching logic of [`Workspaces::find_by_name`], apart from the network.
fn pick_workspace(all: Vec<Workspace>, name: &str) -> Result<Workspace, Error> {
    let id = name.trim().parse::<WorkspaceId>().ok();
    let mut found: Vec<Workspace> = all.into_iter().filter(|w| Some(w.id) == id || w.name == name).collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::new(
            ErrorKind::NotFound,
            format!("no workspace named {name:?} among your workspaces (see `cloudsync workspace list`)"),
        )),
        _ => {
            let ids: Vec<String> = found.iter().map(|w| w.id.to_string()).collect();
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "several of your workspaces are named {name:?} ({}); give the workspace id instead",
                    ids.join(", ")
                ),
            ))
        }
    }
}

/// `/workspaces/{ws}/members` endpoints; see [`Client::members`].
#[derive(Debug, Clone, Copy)]
pub struct Members<'a> {
    pub(crate) client: &'a Client,
    pub(crate) ws: WorkspaceId,
}

impl Members<'_> {
    fn path(&self) -> String {
        format!("/workspaces/{}/members", self.ws)
    }

    /// `GET /workspaces/{ws}/members`.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for non-members, and any transport failure.
    pub async fn list(&self) -> Result<Vec<Member>, Error> {
        self.client.call(self.client.request(Method::GET, &self.path())?).await
    }

    /// `POST /workspaces/{ws}/members`: adds an existing account.
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] when the caller's role may not grant that role, [`ErrorKind::NotFound`] for
    /// an unknown email, [`ErrorKind::Conflict`] for an existing member, and any transport failure.
    pub async fn add(&self, req: &AddMemberRequest) -> Result<Member, Error> {
        self.client.call(self.client.request(Method::POST, &self.path())?.json(req)).await
    }

    /// `PUT /workspaces/{ws}/members/{user}`: changes a member's role.
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`], [`ErrorKind::NotFound`], [`ErrorKind::Conflict`] (e.g. demoting the last
    /// owner), and any transport failure.
    pub async fn set_role(&self, user: UserId, role: Role) -> Result<Member, Error> {
        let rb = self.client.request(Method::PUT, &format!("{}/{user}", self.path()))?;
        self.client.call(rb.json(&SetRoleRequest { role })).await
    }

    /// `DELETE /workspaces/{ws}/members/{user}`.
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`], [`ErrorKind::NotFound`], [`ErrorKind::Conflict`] (the last owner), and any
    /// transport failure.
    pub async fn remove(&self, user: UserId) -> Result<(), Error> {
        self.client.call_empty(self.client.request(Method::DELETE, &format!("{}/{user}", self.path()))?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(name: &str) -> Workspace {
        Workspace {
            id: WorkspaceId::new(),
            name: name.to_owned(),
            e2e_encryption: false,
            require_mfa: false,
            ip_allowlist: Vec::new(),
            role: Role::Owner,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn finds_by_exact_name_or_id() {
        let all = vec![ws("Photos"), ws("photos"), ws("Docs"), ws("Docs")];
        assert_eq!(pick_workspace(all.clone(), "Photos").expect("name").id, all[0].id);
        assert_eq!(pick_workspace(all.clone(), &all[3].id.to_string()).expect("id").id, all[3].id);
        let e = pick_workspace(all.clone(), "Music").expect_err("none");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.message(), "no workspace named \"Music\" among your workspaces (see `cloudsync workspace list`)");
        let e = pick_workspace(all.clone(), "Docs").expect_err("two");
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(e.message().contains(&all[2].id.to_string()), "{e}");
    }
}
