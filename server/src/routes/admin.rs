//! The admin JSON API under `/berth/v1/`: users, robots and permission rules. Admins only
//! (Basic credentials or a berth token of an admin user); open when auth is off.

use crate::accounts;
use crate::auth::{basic_credentials, AuthState, Caller};
use crate::error::{ApiError, Refusal};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_auth::authorizer::Rules;
use berth_auth::{scope::covers, Access, Action, Principal};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

/// The scope a Bearer token needs for the admin endpoints of `/berth/v1/` (users, robots,
/// rules, mirrors): `registry:admin:*`, granted to admins only.
pub const ADMIN_SCOPE: (&str, &str) = ("registry", "admin");

/// An authenticated `/berth/v1/` caller: the principal, and for a Bearer token what the
/// token grants (the API honours it like the registry routes do).
pub(crate) struct ApiCaller {
    principal: Principal,
    token: Option<Vec<Access>>,
}

/// Who is calling the `/berth/v1/` API: `None` when auth is off (everything is allowed).
/// Basic credentials (rate limited like logins) or a berth token.
pub(crate) async fn api_principal(
    st: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Option<ApiCaller>, ApiError> {
    let Some(a) = st.auth.as_deref() else {
        return Ok(None);
    };
    let unauthorized = || {
        ApiError::from(Refusal::Unauthenticated {
            message: "credentials required",
            challenge: format!("Basic realm=\"{}\"", a.cfg.service),
        })
    };
    if let Some(creds) = basic_credentials(headers) {
        let Ok((u, p)) = creds else {
            a.reserve(crate::auth::NO_ACCOUNT, peer.ip())?;
            return Err(unauthorized());
        };
        return match a.login(peer.ip(), &u, &p).await? {
            Some(principal) => Ok(Some(ApiCaller {
                principal,
                token: None,
            })),
            None => Err(unauthorized()),
        };
    }
    let caller = a
        .check(headers, &Extensions::new(), &crate::auth::Need::Base)
        .map_err(|_| unauthorized())?;
    let token = match &caller {
        Caller::Token(c) => c.access.clone(),
        _ => vec![],
    };
    let principal = a.principal(&caller).await?.ok_or_else(unauthorized)?;
    Ok(Some(ApiCaller {
        principal,
        token: Some(token),
    }))
}

fn token_is_admin(token: &[Access]) -> bool {
    token.iter().any(|x| {
        x.kind == ADMIN_SCOPE.0 && x.name == ADMIN_SCOPE.1 && x.actions.iter().any(|a| a == "*")
    })
}

/// The caller and what it may do; `None` when auth is off.
pub struct Who {
    pub(crate) principal: Option<Principal>,
    pub(crate) rules: Option<Rules>,
    /// A Bearer token's grant (`None`: Basic credentials or auth off).
    token: Option<Vec<Access>>,
    auth: Option<Arc<AuthState>>,
}

impl Who {
    pub(crate) fn subject(&self) -> String {
        self.principal
            .as_ref()
            .map(Principal::subject)
            .unwrap_or_else(|| "anonymous".into())
    }

    /// Whether the caller is an admin (with a Bearer token: one granted `registry:admin:*`).
    pub(crate) fn is_admin(&self) -> bool {
        match (&self.principal, &self.token) {
            (None, _) => true,
            (Some(Principal::User { admin: true, .. }), None) => true,
            (Some(Principal::User { admin: true, .. }), Some(t)) => token_is_admin(t),
            _ => false,
        }
    }

    pub(crate) fn may(&self, repo: &str, action: Action) -> bool {
        let by_rules = match &self.rules {
            None => true,
            Some(r) => covers(&r.allowed(repo), action),
        };
        let by_token = match &self.token {
            None => true,
            Some(t) => {
                token_is_admin(t)
                    || t.iter().any(|x| {
                        x.kind == "repository" && x.name == repo && covers(&x.action_set(), action)
                    })
                    || (action == Action::Pull
                        && self
                            .auth
                            .as_ref()
                            .is_some_and(|a| a.authorizer.public(repo)))
            }
        };
        by_rules && by_token
    }

    pub(crate) fn require(&self, repo: &str, action: Action) -> Result<(), ApiError> {
        if self.may(repo, action) {
            Ok(())
        } else {
            Err(Refusal::AccessDenied {
                repo: repo.to_owned(),
                action,
            }
            .into())
        }
    }
}

pub(crate) async fn who(st: &AppState, h: &HeaderMap, peer: SocketAddr) -> Result<Who, ApiError> {
    let caller = api_principal(st, h, peer).await?;
    let rules = match (&st.auth, &caller) {
        (Some(a), Some(c)) => Some(a.authorizer.rules(&c.principal).await?),
        (Some(_), None) => unreachable!("api_principal answers None only when auth is off"),
        (None, _) => None,
    };
    let (principal, token) = match caller {
        Some(c) => (Some(c.principal), c.token),
        None => (None, None),
    };
    Ok(Who {
        principal,
        rules,
        token,
        auth: st.auth.clone(),
    })
}

/// The caller of a repository endpoint that needs pull (inspect, resolve, verify status),
/// with the anonymous rules of `/v2/`: without credentials a public repository
/// (`auth.anonymous_pull`) is served, and any other gets a Bearer challenge naming the
/// repository's pull scope (an anonymous token then carries `berth grant --anonymous` rules).
pub(crate) async fn who_may_pull(
    st: &AppState,
    h: &HeaderMap,
    peer: SocketAddr,
    repo: &str,
) -> Result<Who, ApiError> {
    if let Some(a) = st.auth.as_deref() {
        if !h.contains_key(axum::http::header::AUTHORIZATION) {
            let need = crate::auth::Need::Repo(repo.to_owned(), Action::Pull);
            a.check(h, &Extensions::new(), &need)?;
            return Ok(Who {
                principal: Some(Principal::Anonymous),
                rules: Some(a.authorizer.rules(&Principal::Anonymous).await?),
                token: Some(vec![]),
                auth: st.auth.clone(),
            });
        }
    }
    who(st, h, peer).await
}

fn peer_of(parts: &Parts) -> Result<SocketAddr, ApiError> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no peer address on the request")))
}

/// The caller of a `/berth/v1/` route, as an extractor: authenticated (Basic credentials,
/// rate limited like logins, or a berth token) before the handler runs.
impl FromRequestParts<AppState> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let peer = peer_of(parts)?;
        who(st, &parts.headers, peer).await
    }
}

/// A handler that takes `Admin` runs only for admins (see [`require_admin`]); anyone when
/// auth is off.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let peer = peer_of(parts)?;
        require_admin(st, &parts.headers, peer).await?;
        Ok(Admin)
    }
}

/// Admins only: Basic credentials of an admin, or an admin's Bearer token granted
/// `registry:admin:*` (a token scoped to some repositories does not administer anything).
pub(crate) async fn require_admin(
    st: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    let who = who(st, headers, peer).await?;
    if who.is_admin() {
        Ok(())
    } else if who.token.is_some()
        && matches!(who.principal, Some(Principal::User { admin: true, .. }))
    {
        Err(Refusal::Denied(
            "admin rights required: this token was not granted registry:admin:*".into(),
        )
        .into())
    } else {
        Err(Refusal::Denied("admin rights required".into()).into())
    }
}

/// Parses a JSON body after the caller was checked, with errors in the spec's format.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(anyhow::anyhow!("invalid JSON body: {e}")))
}

pub(crate) fn bad(e: anyhow::Error) -> ApiError {
    Refusal::BadRequest(format!("{e:#}")).into()
}

pub(crate) fn not_found(what: &str) -> ApiError {
    Refusal::NotFound(what.to_owned()).into()
}

/// `GET /berth/v1/users`
pub async fn list_users(State(st): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let users = st.accounts.users().await?;
    let out: Vec<_> = users
        .into_iter()
        .map(|u| json!({"name": u.name, "admin": u.admin, "groups": u.groups}))
        .collect();
    Ok(Json(out).into_response())
}

/// Body of `POST /berth/v1/users`.
#[derive(Deserialize)]
pub struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    groups: Vec<String>,
}

/// `POST /berth/v1/users`
pub async fn create_user(
    State(st): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> Result<Response, ApiError> {
    let u: NewUser = json_body(&body)?;
    accounts::add_user(&st.accounts, &u.name, &u.password, u.admin, &u.groups)
        .await
        .map_err(bad)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": u.name, "admin": u.admin, "groups": u.groups})),
    )
        .into_response())
}

/// Body of `PUT /berth/v1/users/{name}`.
#[derive(Deserialize)]
pub struct Passwd {
    password: String,
}

/// `PUT /berth/v1/users/{name}`: new password.
pub async fn update_user(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p: Passwd = json_body(&body)?;
    if accounts::set_password(&st.accounts, &name, &p.password)
        .await
        .map_err(bad)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found("user"))
    }
}

/// `DELETE /berth/v1/users/{name}`
pub async fn delete_user(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if st.accounts.delete_user(&name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found("user"))
    }
}

/// `GET /berth/v1/robots`
pub async fn list_robots(State(st): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let out: Vec<_> = st
        .accounts
        .robots()
        .await?
        .into_iter()
        .map(|r| json!({"name": format!("robot${}", r.name), "expires_at": r.expires_at}))
        .collect();
    Ok(Json(out).into_response())
}

/// Body of `POST /berth/v1/robots`.
#[derive(Deserialize)]
pub struct NewRobot {
    name: String,
    #[serde(default)]
    allow: Vec<String>,
    /// `90d`, `12h`, ...
    #[serde(default)]
    expires: Option<String>,
}

/// `POST /berth/v1/robots`: the secret is in this answer and nowhere else.
pub async fn create_robot(
    State(st): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> Result<Response, ApiError> {
    let r: NewRobot = json_body(&body)?;
    let expires = r
        .expires
        .as_deref()
        .map(accounts::parse_duration)
        .transpose()
        .map_err(bad)?;
    let secret = accounts::create_robot(&st.accounts, &r.name, &r.allow, expires)
        .await
        .map_err(bad)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": format!("robot${}", r.name), "secret": secret})),
    )
        .into_response())
}

/// `DELETE /berth/v1/robots/{name}`
pub async fn delete_robot(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = name.strip_prefix("robot$").unwrap_or(&name).to_owned();
    if st.accounts.delete_robot(&name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found("robot"))
    }
}

/// `?principal=user:NAME` (or `group:`, `robot:`, `anonymous`).
#[derive(Deserialize)]
pub struct PermissionsQuery {
    #[serde(default)]
    principal: Option<String>,
}

/// `GET /berth/v1/permissions[?principal=P]`: every rule, or one principal's.
pub async fn list_permissions(
    State(st): State<AppState>,
    _admin: Admin,
    q: Result<axum::extract::Query<PermissionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = q.map_err(super::api::bad_query)?;
    let only: Vec<String> = q.principal.into_iter().collect();
    let out: Vec<_> = st
        .accounts
        .permissions(&only)
        .await?
        .into_iter()
        .map(|p| json!({"id": p.id, "principal": p.principal, "pattern": p.pattern, "actions": p.actions}))
        .collect();
    Ok(Json(out).into_response())
}

/// Body of `POST /berth/v1/permissions`.
#[derive(Deserialize)]
pub struct NewPermission {
    principal: String,
    pattern: String,
    actions: String,
}

/// `POST /berth/v1/permissions`
pub async fn create_permission(
    State(st): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> Result<Response, ApiError> {
    let p: NewPermission = json_body(&body)?;
    let ok = p.principal == "anonymous"
        || ["user:", "group:", "robot:"]
            .iter()
            .any(|k| p.principal.starts_with(k));
    if !ok {
        return Err(bad(anyhow::anyhow!(
            "principal must be user:NAME, group:NAME, robot:NAME or anonymous"
        )));
    }
    accounts::grant(&st.accounts, &p.principal, &p.pattern, &p.actions)
        .await
        .map_err(bad)?;
    Ok(StatusCode::CREATED.into_response())
}

/// `DELETE /berth/v1/permissions/{id}`: the rule stops granting at once for new tokens
/// (access tokens already issued run out within `token_ttl_secs`).
pub async fn delete_permission(
    State(st): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad(anyhow::anyhow!("permission id {id:?} is not a number")))?;
    if st.accounts.delete_permission(id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found(&format!("permission {id}")))
    }
}

/// `POST /berth/v1/users/{name}/revoke-tokens`: every refresh token of the user stops
/// working (access tokens already issued run out within `token_ttl_secs`).
pub async fn revoke_user_tokens(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let exists = st.accounts.user(&name).await?.is_some();
    revoke_tokens(&st, "user", &name, exists).await
}

/// `POST /berth/v1/robots/{name}/revoke-tokens`
pub async fn revoke_robot_tokens(
    State(st): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = name.strip_prefix("robot$").unwrap_or(&name);
    let exists = st.accounts.robot(name).await?.is_some();
    revoke_tokens(&st, "robot", name, exists).await
}

/// Revokes the refresh tokens of the principal `<kind>:<name>`, if it exists.
async fn revoke_tokens(
    st: &AppState,
    kind: &'static str,
    name: &str,
    exists: bool,
) -> Result<Response, ApiError> {
    if !exists {
        return Err(not_found(kind));
    }
    let n = st
        .accounts
        .revoke_refresh_tokens(&format!("{kind}:{name}"))
        .await?;
    tracing::info!(principal = %format!("{kind}:{name}"), count = n, "refresh tokens revoked");
    Ok(Json(json!({"revoked": n})).into_response())
}
