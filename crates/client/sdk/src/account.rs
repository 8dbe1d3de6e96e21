//! Account endpoints: logging in and out, the caller's devices (login sessions), and account creation by
//! server administrators.

use cloudsync_types::SessionId;
use cloudsync_types::api::{CreateUserRequest, Device, LoginRequest, LoginResponse, UserInfo, WhoAmI};
use reqwest::Method;

use crate::{Client, Error};

/// `/auth/...` endpoints; see [`Client::auth`].
#[derive(Debug, Clone, Copy)]
pub struct Auth<'a> {
    pub(crate) client: &'a Client,
}

impl Auth<'_> {
    /// `POST /auth/login`: exchanges email and password for a bearer token. Use the token with
    /// [`Client::with_token`]; the server shows it only this once.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Unauthenticated`] for wrong credentials, [`crate::ErrorKind::RateLimited`] after too
    /// many attempts, and any transport failure.
    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse, Error> {
        self.client.call(self.client.request(Method::POST, "/auth/login")?.json(req)).await
    }

    /// `POST /auth/logout`: ends the current session; the token stops working.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Unauthenticated`] when the token is already invalid, and any transport failure.
    pub async fn logout(&self) -> Result<(), Error> {
        self.client.call_empty(self.client.request(Method::POST, "/auth/logout")?).await
    }

    /// `GET /auth/whoami`: the account and session the token belongs to.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Unauthenticated`] without a valid token, and any transport failure.
    pub async fn whoami(&self) -> Result<WhoAmI, Error> {
        self.client.call(self.client.request(Method::GET, "/auth/whoami")?).await
    }
}

/// `/devices` endpoints; see [`Client::devices`].
#[derive(Debug, Clone, Copy)]
pub struct Devices<'a> {
    pub(crate) client: &'a Client,
}

impl Devices<'_> {
    /// `GET /devices`: the caller's login sessions.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Unauthenticated`] without a valid token, and any transport failure.
    pub async fn list(&self) -> Result<Vec<Device>, Error> {
        self.client.call(self.client.request(Method::GET, "/devices")?).await
    }

    /// `DELETE /devices/{id}`: logs that device out.
    ///
    /// # Errors
    /// [`crate::ErrorKind::NotFound`] for an unknown session, and any transport failure.
    pub async fn revoke(&self, id: SessionId) -> Result<(), Error> {
        self.client.call_empty(self.client.request(Method::DELETE, &format!("/devices/{id}"))?).await
    }
}

/// `/users` endpoints; see [`Client::users`].
#[derive(Debug, Clone, Copy)]
pub struct Users<'a> {
    pub(crate) client: &'a Client,
}

impl Users<'_> {
    /// `POST /users`: creates an account (server administrators only).
    ///
    /// # Errors
    /// [`crate::ErrorKind::Forbidden`] for non-administrators, [`crate::ErrorKind::Conflict`] when the email
    /// is taken, [`crate::ErrorKind::BadRequest`] for a weak password or bad email, and any transport failure.
    pub async fn create(&self, req: &CreateUserRequest) -> Result<UserInfo, Error> {
        self.client.call(self.client.request(Method::POST, "/users")?.json(req)).await
    }
}
