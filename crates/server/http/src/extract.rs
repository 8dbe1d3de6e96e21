//! Request guards. Each route states what it needs in its signature: `Principal` (any signed-in account),
//! `WorkspaceAccess<Editor>` (a member of the workspace in the path with at least that role), `ClientIp`.
//! They run before the body is read, so a refused request costs no upload.

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::header;
use axum::http::request::Parts;
use cloudsync_server_core::{Access, Actor};
use cloudsync_types::{Role, WorkspaceId};
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// The client's address: the TCP peer, or, when the peer is a configured trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy. Canonicalised, so `::ffff:10.1.2.3` is
/// `10.1.2.3`.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical())
            .ok_or_else(|| ApiError::new(cloudsync_types::ErrorCode::Internal, "no peer address"))?;
        if !state.trusted_proxies.contains(&peer) {
            return Ok(ClientIp(peer));
        }
        // Walk the header from the right: each entry was appended by the hop to its right. Trusted proxies
        // are stepped over; the first other address is the client. An entry that cannot be read stops the walk
        // at the last hop that could be trusted: what lies to its left was written by someone we cannot vouch
        // for (a proxy that appends `address:port` is read correctly).
        let entries: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = forwarded_ip(entry) else { break };
            client = ip;
            if !state.trusted_proxies.contains(&ip) {
                break;
            }
        }
        Ok(ClientIp(client))
    }
}

/// One `X-Forwarded-For` entry: an address, `address:port` or `[v6]:port`, canonicalised.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// A signed-in account (bearer session token).
#[derive(Debug, Clone)]
pub struct Principal(pub Actor);

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthenticated("sign in first: `cloudsync login` (send Authorization: Bearer TOKEN)")
            })?;
        let actor = state.core.authenticate(token.trim(), &ip.to_string()).await?;
        let p = Principal(actor);
        parts.extensions.insert(p.clone());
        Ok(p)
    }
}

/// A signed-in account with a session (a login), not an API key: what managing the account itself needs
/// (keys, devices, two-factor authentication, account events), so a leaked key cannot mint another or lock
/// its owner out. A key gets 403 before the body is read.
#[derive(Debug, Clone)]
pub struct SessionOnly(pub Actor);

impl FromRequestParts<AppState> for SessionOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Principal(actor) = Principal::from_request_parts(parts, state).await?;
        if actor.api_key.is_some() {
            return Err(ApiError::new(
                cloudsync_types::ErrorCode::Forbidden,
                "an API key cannot manage the account (keys, devices, two-factor authentication, account events); sign in with `cloudsync login`",
            ));
        }
        Ok(SessionOnly(actor))
    }
}

/// A server administrator signed in with a session. Anyone else gets 403 before the body is read.
#[derive(Debug, Clone)]
pub struct ServerAdmin(pub Actor);

impl FromRequestParts<AppState> for ServerAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let SessionOnly(actor) = SessionOnly::from_request_parts(parts, state).await?;
        if !actor.is_admin {
            return Err(ApiError::new(cloudsync_types::ErrorCode::Forbidden, "this needs a server administrator"));
        }
        Ok(ServerAdmin(actor))
    }
}

/// A permission level a route needs.
pub trait Perm: Send + Sync + 'static {
    /// The lowest role that has it.
    const ROLE: Role;
}

/// Marker: at least Viewer.
#[derive(Debug)]
pub struct Viewer;
/// Marker: at least Editor.
#[derive(Debug)]
pub struct Editor;
/// Marker: at least Admin.
#[derive(Debug)]
pub struct Admin;
/// Marker: Owner.
#[derive(Debug)]
pub struct Owner;

impl Perm for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl Perm for Editor {
    const ROLE: Role = Role::Editor;
}
impl Perm for Admin {
    const ROLE: Role = Role::Admin;
}
impl Perm for Owner {
    const ROLE: Role = Role::Owner;
}

/// Membership of the workspace named by the `{ws}` path segment with at least `P::ROLE`. A non-member gets
/// 404 (the workspace's existence is not confirmed), a lower role 403.
#[derive(Debug)]
pub struct WorkspaceAccess<P: Perm>(pub Access, pub PhantomData<P>);

impl<P: Perm> FromRequestParts<AppState> for WorkspaceAccess<P> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Principal(actor) = Principal::from_request_parts(parts, state).await?;
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("missing workspace id in the path"))?;
        let raw = params
            .iter()
            .find(|(k, _)| *k == "ws")
            .map(|(_, v)| v.to_owned())
            .ok_or_else(|| ApiError::bad_request("missing workspace id in the path"))?;
        let ws: WorkspaceId =
            raw.parse().map_err(|_| ApiError::bad_request(format!("{raw:?} is not a workspace id (a UUID)")))?;
        let access = state.core.access(actor, ws, P::ROLE).await?;
        Ok(WorkspaceAccess(access, PhantomData))
    }
}

/// JSON body whose rejections are API errors with a clear message.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::bad_request("send the body as JSON with Content-Type: application/json"))
            }
            Err(JsonRejection::BytesRejection(_)) => Err(ApiError::new(
                cloudsync_types::ErrorCode::PayloadTooLarge,
                "the request body is too large or was cut off",
            )),
            Err(e) => Err(ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()))),
        }
    }
}

/// Query string whose rejections are API errors.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(format!("invalid query string: {}", e.body_text())))
    }
}
