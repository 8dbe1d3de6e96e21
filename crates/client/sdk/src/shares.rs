//! Share links: `client.shares(ws).create(..)`, `.list()`, `.revoke(id)`.

use cloudsync_types::api::{CreateShareRequest, NewShareLink, ShareLink};
use cloudsync_types::{ShareId, WorkspaceId};
use reqwest::Method;

use crate::{Client, Error};

/// `/workspaces/{ws}/shares` endpoints; see [`Client::shares`].
#[derive(Debug, Clone, Copy)]
pub struct Shares<'a> {
    pub(crate) client: &'a Client,
    pub(crate) ws: WorkspaceId,
}

impl Shares<'_> {
    /// `POST /workspaces/{ws}/shares` (Editor): a link to a file. [`Client::share_url`] makes the URL to
    /// hand out; the token is shown only in this answer.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`] for no such file, [`crate::ErrorKind::BadRequest`] for a short password,
    /// a past expiry or a zero limit, [`crate::ErrorKind::Forbidden`] below Editor, and any transport failure.
    pub async fn create(&self, req: &CreateShareRequest) -> Result<NewShareLink, Error> {
        self.client.call(self.client.request(Method::POST, &format!("/workspaces/{}/shares", self.ws))?.json(req)).await
    }

    /// `GET /workspaces/{ws}/shares`: live links (all of them for Admins and Owners, one's own for Editors).
    ///
    /// # Errors
    /// [`crate::ErrorKind::Forbidden`] below Editor, and any transport failure.
    pub async fn list(&self) -> Result<Vec<ShareLink>, Error> {
        self.client.call(self.client.request(Method::GET, &format!("/workspaces/{}/shares", self.ws))?).await
    }

    /// `DELETE /workspaces/{ws}/shares/{id}`: revokes a link at once.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`], [`crate::ErrorKind::Forbidden`] for someone else's link below Admin, and
    /// any transport failure.
    pub async fn revoke(&self, id: ShareId) -> Result<(), Error> {
        self.client
            .call_empty(self.client.request(Method::DELETE, &format!("/workspaces/{}/shares/{id}", self.ws))?)
            .await
    }
}

impl Client {
    /// Share links of workspace `ws`.
    pub fn shares(&self, ws: WorkspaceId) -> Shares<'_> {
        Shares { client: self, ws }
    }

    /// The full URL of a new link on this server: `https://HOST:PORT/s/TOKEN`.
    pub fn share_url(&self, link: &NewShareLink) -> String {
        format!("{}{}", self.base_url(), link.url_path)
    }
}
