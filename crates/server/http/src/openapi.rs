//! The OpenAPI document, generated from the handlers' annotations and the shared types.

use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "CloudSync API", description = "Self-hosted, encrypted file sync. All calls but health and login need `Authorization: Bearer TOKEN`."),
    paths(
        routes::health, routes::login, routes::logout, routes::whoami, routes::mfa_status, routes::mfa_enroll,
        routes::mfa_confirm, routes::mfa_disable, routes::mfa_recovery_codes, routes::list_devices, routes::revoke_device,
        routes::create_user, routes::list_workspaces, routes::create_workspace, routes::get_workspace,
        routes::delete_workspace, routes::update_settings, routes::workspace_keys, routes::list_members, routes::add_member,
        routes::set_member_role, routes::remove_member, routes::missing_chunks, routes::upload_chunks,
        routes::chunk_signatures, routes::upload_deltas,
        routes::get_chunk, routes::fetch_chunks, routes::commit, routes::commit_batch, routes::list_files,
        routes::manifest, routes::manifests, routes::content, routes::versions, routes::delete_files, routes::restore,
        routes::trash, routes::changes, routes::workspace_audit, routes::verify_workspace_audit,
        routes::account_audit, routes::verify_account_audit, routes::list_api_keys, routes::create_api_key,
        routes::rotate_api_key, routes::revoke_api_key, routes::create_share, routes::list_shares,
        routes::revoke_share, routes::open_share, routes::open_share_with_password, routes::my_user_keys,
        routes::put_user_keys, routes::public_user_keys, routes::e2ee_log, routes::append_e2ee_log,
        routes::my_e2ee_keys, openapi_json,
    ),
    modifiers(&Bearer),
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// This document (signed-in accounts only: nothing but health and login is reachable without a session).
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "server", responses((status = 200, description = "OpenAPI 3.1 document"), (status = 401)))]
pub(crate) async fn openapi_json(_: crate::extract::Principal) -> impl IntoResponse {
    axum::Json(document())
}
