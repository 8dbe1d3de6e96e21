//! End-to-end encryption keys: `client.keys().me()`, `.upload(..)`, `.public(email)`. The SDK moves the
//! blobs; making, sealing, opening and verifying them is `cloudsync_crypto::e2ee`'s job, on the client.

use cloudsync_types::api::{MyUserKeys, PublicUserKeys, UploadUserKeys};
use reqwest::Method;

use crate::{Client, Error};

/// `/keys` endpoints; see [`Client::keys`].
#[derive(Debug, Clone, Copy)]
pub struct UserKeys<'a> {
    pub(crate) client: &'a Client,
}

impl UserKeys<'_> {
    /// `GET /keys/me`: the caller's public identity and sealed secrets.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`] before `keys init`, and any transport failure.
    pub async fn me(&self) -> Result<MyUserKeys, Error> {
        self.client.call(self.client.request(Method::GET, "/keys/me")?).await
    }

    /// `PUT /keys/me`: stores the caller's first keys, or reseals the same identity.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Conflict`] when other keys exist, [`crate::ErrorKind::BadRequest`] for an identity
    /// not signed for this account, and any transport failure.
    pub async fn upload(&self, keys: &UploadUserKeys) -> Result<MyUserKeys, Error> {
        self.client.call(self.client.request(Method::PUT, "/keys/me")?.json(keys)).await
    }

    /// `GET /keys?email=`: another account's public identity (verify it before use).
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`] for no such account or one without keys, and any transport failure.
    pub async fn public(&self, email: &str) -> Result<PublicUserKeys, Error> {
        self.client.call(self.client.request(Method::GET, "/keys")?.query(&[("email", email)])).await
    }
}

impl Client {
    /// End-to-end encryption keys.
    pub fn keys(&self) -> UserKeys<'_> {
        UserKeys { client: self }
    }
}
