//! Account endpoints: logging in and out, the caller's devices (login sessions), and account creation by
//! server administrators.

use cloudsync_types::SessionId;
use cloudsync_types::api::{
    CreateUserRequest, Device, LoginRequest, LoginResponse, MfaCode, MfaEnrollRequest, MfaEnrollment, MfaStatus,
    RecoveryCodes, UserInfo, WhoAmI,
};
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

    /// `GET /auth/mfa`: whether two-factor authentication is on, and how many recovery codes are left.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Unauthenticated`] without a valid token, and any transport failure.
    pub async fn mfa_status(&self) -> Result<MfaStatus, Error> {
        self.client.call(self.client.request(Method::GET, "/auth/mfa")?).await
    }

    /// `POST /auth/mfa/enroll`: a new TOTP secret for an authenticator app (shown once). Complete the
    /// enrolment with [`Auth::mfa_confirm`]. `password` is needed on a session opened more than 15 minutes
    /// ago.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Conflict`] when MFA is already on, [`crate::ErrorKind::Forbidden`] with code
    /// `reauthentication_required` when the password is needed, and any transport failure.
    pub async fn mfa_enroll(&self, password: Option<&str>) -> Result<MfaEnrollment, Error> {
        let body = MfaEnrollRequest { password: password.map(str::to_owned) };
        self.client.call(self.client.request(Method::POST, "/auth/mfa/enroll")?.json(&body)).await
    }

    /// `POST /auth/mfa/confirm`: turns MFA on with the app's first code; returns the recovery codes (shown once).
    ///
    /// # Errors
    /// [`crate::ErrorKind::BadRequest`] for a wrong code, [`crate::ErrorKind::Conflict`] when no enrolment is
    /// pending, and any transport failure.
    pub async fn mfa_confirm(&self, code: &str) -> Result<RecoveryCodes, Error> {
        let body = MfaCode { code: code.to_owned() };
        self.client.call(self.client.request(Method::POST, "/auth/mfa/confirm")?.json(&body)).await
    }

    /// `POST /auth/mfa/disable`: turns MFA off; needs a current app code or a recovery code.
    ///
    /// # Errors
    /// [`crate::ErrorKind::BadRequest`] for a wrong code, [`crate::ErrorKind::Conflict`] when MFA is off,
    /// and any transport failure.
    pub async fn mfa_disable(&self, code: &str) -> Result<(), Error> {
        let body = MfaCode { code: code.to_owned() };
        self.client.call_empty(self.client.request(Method::POST, "/auth/mfa/disable")?.json(&body)).await
    }

    /// `POST /auth/mfa/recovery-codes`: replaces the recovery codes; needs a current app code or a recovery
    /// code.
    ///
    /// # Errors
    /// As [`Auth::mfa_disable`].
    pub async fn mfa_recovery_codes(&self, code: &str) -> Result<RecoveryCodes, Error> {
        let body = MfaCode { code: code.to_owned() };
        self.client.call(self.client.request(Method::POST, "/auth/mfa/recovery-codes")?.json(&body)).await
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
