//! API keys: `client.api_keys().create(..)`, and clients that authenticate with one
//! ([`Client::with_api_key`], [`Client::from_env`]).

use cloudsync_types::api::{ApiKey, CreateApiKeyRequest, NewApiKey, RotateApiKeyRequest};
use reqwest::Method;

use crate::{Client, Error, ErrorKind, Trust, parse_fingerprint};

/// `/apikeys` endpoints; see [`Client::api_keys`]. They need a signed-in session: a key cannot manage keys.
#[derive(Debug, Clone, Copy)]
pub struct ApiKeys<'a> {
    pub(crate) client: &'a Client,
}

impl ApiKeys<'_> {
    /// `GET /apikeys`: the caller's keys, by name (never their secrets).
    ///
    /// # Errors
    /// [`ErrorKind::Forbidden`] through an API key, and any transport failure.
    pub async fn list(&self) -> Result<Vec<ApiKey>, Error> {
        self.client.call(self.client.request(Method::GET, "/apikeys")?).await
    }

    /// `POST /apikeys`: a new key; [`NewApiKey::secret`] is shown this once.
    ///
    /// # Errors
    /// [`ErrorKind::MfaRequired`] when the account has two-factor authentication on and `req.totp` is
    /// missing, [`ErrorKind::BadRequest`] for a wrong code or bad input, [`ErrorKind::Conflict`] for a name in
    /// use, and any transport failure.
    pub async fn create(&self, req: &CreateApiKeyRequest) -> Result<NewApiKey, Error> {
        self.client.call(self.client.request(Method::POST, "/apikeys")?.json(req)).await
    }

    /// `POST /apikeys/{id}/rotate`: a new secret; the old one works for the grace period only.
    ///
    /// # Errors
    /// As [`ApiKeys::create`], or [`ErrorKind::NotFound`].
    pub async fn rotate(&self, id: &str, req: &RotateApiKeyRequest) -> Result<NewApiKey, Error> {
        let path = format!("/apikeys/{}/rotate", urlencoding(id));
        self.client.call(self.client.request(Method::POST, &path)?.json(req)).await
    }

    /// `DELETE /apikeys/{id}`: revokes the key at once.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`], and any transport failure.
    pub async fn revoke(&self, id: &str) -> Result<(), Error> {
        self.client.call_empty(self.client.request(Method::DELETE, &format!("/apikeys/{}", urlencoding(id)))?).await
    }
}

/// Key ids are hex; anything else is sent percent-encoded so it cannot change the path.
fn urlencoding(id: &str) -> String {
    id.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

impl Client {
    /// A client for the server at `base_url` that authenticates with the API key `key` (`csk_...`). The
    /// server's certificate is pinned to `CLOUDSYNC_SERVER_FINGERPRINT` when that is set, and checked against
    /// the operating system's roots otherwise; use [`Client::new`] and [`Client::with_token`] to choose.
    ///
    /// # Errors
    /// [`ErrorKind::BadRequest`] when `key` is not an API key or the URL or fingerprint is malformed.
    pub fn with_api_key(base_url: &str, key: &str) -> Result<Self, Error> {
        let key = key.trim();
        if !key.starts_with("csk_") {
            return Err(Error::new(
                ErrorKind::BadRequest,
                "that is not a CloudSync API key (they start with csk_); create one with `cloudsync apikey create`",
            ));
        }
        let trust = match std::env::var("CLOUDSYNC_SERVER_FINGERPRINT") {
            Ok(fp) if !fp.trim().is_empty() => Trust::Fingerprint(parse_fingerprint(&fp)?),
            _ => Trust::System,
        };
        Ok(Self::new(base_url, trust)?.with_token(key))
    }

    /// A client configured from the environment: `CLOUDSYNC_SERVER` (the URL), `CLOUDSYNC_API_KEY` and,
    /// optionally, `CLOUDSYNC_SERVER_FINGERPRINT` (see [`Client::with_api_key`]).
    ///
    /// # Errors
    /// [`ErrorKind::BadRequest`] naming the variable that is missing or malformed.
    pub fn from_env() -> Result<Self, Error> {
        let var = |name: &str| {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                Error::new(
                    ErrorKind::BadRequest,
                    format!("{name} is not set; set it to use an API key from the environment"),
                )
            })
        };
        let server = var("CLOUDSYNC_SERVER")?;
        let key = zeroize::Zeroizing::new(var("CLOUDSYNC_API_KEY")?);
        Self::with_api_key(&server, &key)
    }
}
