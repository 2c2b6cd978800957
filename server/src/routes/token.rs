//! The token endpoint of the Docker registry token flow (`/auth/token`, GET and the OAuth2
//! POST form) and the public keys (`/auth/jwks.json`).

use super::query_pairs;
use crate::auth::{bad_credentials, basic_credentials, AuthState, NO_ACCOUNT};
use crate::error::{ApiError, Refusal};
use crate::registry::verification::rfc3339;
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_auth::{Principal, Scope};
use serde_json::json;
use std::net::SocketAddr;

fn auth_state(st: &AppState) -> Result<&AuthState, ApiError> {
    st.auth
        .as_deref()
        .ok_or_else(|| Refusal::TokenAuthDisabled.into())
}

/// The key of a principal in the refresh-token table (`None`: anonymous gets none).
fn refresh_key(p: &Principal) -> Option<String> {
    match p {
        Principal::Anonymous => None,
        Principal::User { name, .. } => Some(format!("user:{name}")),
        Principal::Robot { name } => Some(format!("robot:{name}")),
    }
}

/// What a token answer carries besides the access token.
#[derive(Clone, Copy)]
enum Refresh<'a> {
    /// No refresh token.
    None,
    /// A new refresh token, recorded.
    New,
    /// A new refresh token replacing this one (jti), which stops working.
    Rotate(&'a str),
}

async fn issue(
    a: &AuthState,
    p: &Principal,
    scopes: &[Scope],
    refresh: Refresh<'_>,
) -> Result<Response, ApiError> {
    let access = a.authorizer.grant(p, scopes).await?;
    let granted: Vec<String> = access
        .iter()
        .map(|x| format!("{}:{}:{}", x.kind, x.name, x.actions.join(",")))
        .collect();
    let ttl = a.cfg.token_ttl_secs as i64;
    let (token, claims) = a
        .keys
        .issue(&p.subject(), &a.cfg.service, access, ttl, false)
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut body = json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": rfc3339(claims.iat),
        "scope": granted.join(" "),
    });
    let key = refresh_key(p);
    match (&refresh, key) {
        (Refresh::None, _) | (_, None) => {}
        (Refresh::New | Refresh::Rotate(_), Some(key)) => {
            let (token, c) = a
                .keys
                .issue(
                    &p.subject(),
                    &a.cfg.service,
                    vec![],
                    a.cfg.refresh_ttl_secs as i64,
                    true,
                )
                .map_err(|e| ApiError::Internal(e.into()))?;
            match refresh {
                Refresh::Rotate(old) => {
                    if !a
                        .meta
                        .rotate_refresh_token(old, &key, (&c.jti, c.exp))
                        .await?
                    {
                        return Err(revoked());
                    }
                }
                _ => a.meta.store_refresh_token(&c.jti, &key, c.exp).await?,
            }
            body["refresh_token"] = json!(token);
        }
    }
    tracing::info!(user = %p.subject(), scopes = ?granted, "token issued");
    Ok((StatusCode::OK, Json(body)).into_response())
}

fn revoked() -> ApiError {
    Refusal::BadCredentials("invalid refresh token (revoked, replaced or expired)").into()
}

fn check_service(a: &AuthState, service: Option<&str>) -> Result<(), ApiError> {
    match service {
        Some(s) if !s.is_empty() && s != a.cfg.service => {
            Err(Refusal::BadRequest(format!("unknown service {s:?}")).into())
        }
        _ => Ok(()),
    }
}

async fn login(
    a: &AuthState,
    ip: std::net::IpAddr,
    user: &str,
    pass: &str,
) -> Result<Principal, ApiError> {
    a.login(ip, user, pass).await?.ok_or_else(bad_credentials)
}

/// `GET /auth/token?service=&scope=...[&offline_token=true]` with optional Basic credentials.
pub async fn get_token(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Result<Response, ApiError> {
    let a = auth_state(&st)?;
    let q = query_pairs(&req);
    let get = |k: &str| q.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
    check_service(a, get("service"))?;
    let scopes = Scope::parse_all(
        q.iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let principal = match basic_credentials(req.headers()) {
        None => Principal::Anonymous,
        Some(Err(())) => {
            a.reserve(NO_ACCOUNT, peer.ip())?;
            return Err(bad_credentials());
        }
        Some(Ok((u, p))) => login(a, peer.ip(), &u, &p).await?,
    };
    let refresh = if get("offline_token") == Some("true") {
        Refresh::New
    } else {
        Refresh::None
    };
    issue(a, &principal, &scopes, refresh).await
}

/// `POST /auth/token` (form): the OAuth2 password and refresh_token grants docker sends.
/// A refresh token comes only with `access_type=offline`; asked for in a refresh grant it
/// replaces the one presented, which stops working (docker's refresh grants do not ask, and
/// keep using the one `docker login` stored).
pub async fn post_token(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    _headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let a = auth_state(&st)?;
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
    check_service(a, get("service"))?;
    let scopes = Scope::parse_all(
        form.iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.as_str()),
    );
    let offline = get("access_type") == Some("offline");
    match get("grant_type") {
        Some("password") => {
            let (Some(u), Some(p)) = (get("username"), get("password")) else {
                return Err(bad_credentials());
            };
            let principal = login(a, peer.ip(), u, p).await?;
            let refresh = if offline { Refresh::New } else { Refresh::None };
            issue(a, &principal, &scopes, refresh).await
        }
        Some("refresh_token") => {
            let Some(t) = get("refresh_token") else {
                return Err(bad_credentials());
            };
            // Not a login attempt: a refresh token is signed, so there is nothing to guess and
            // no argon2 run to bound; the failed-login limiter stays out of it.
            // berth's own refresh tokens only (never a trusted issuer's), still on record.
            let claims = match a.keys.verify(t, &a.cfg.service, true) {
                Ok(c) if c.iss == a.cfg.issuer => c,
                _ => {
                    return Err(Refusal::BadCredentials("invalid refresh token").into());
                }
            };
            let Some(principal) = a.authorizer.principal(&claims.sub).await? else {
                return Err(Refusal::BadCredentials("the account no longer exists").into());
            };
            let Some(key) = refresh_key(&principal) else {
                return Err(revoked());
            };
            if !a.meta.refresh_token_valid(&claims.jti, &key).await? {
                tracing::info!(user = %claims.sub, client.ip = %peer.ip(), "refused a revoked refresh token");
                return Err(revoked());
            }
            let refresh = if offline {
                Refresh::Rotate(&claims.jti)
            } else {
                Refresh::None
            };
            issue(a, &principal, &scopes, refresh).await
        }
        other => Err(Refusal::BadRequest(format!(
            "unsupported grant_type {:?}",
            other.unwrap_or("")
        ))
        .into()),
    }
}

/// `GET /auth/jwks.json`: the keys berth signs with.
pub async fn jwks(State(st): State<AppState>) -> Result<Response, ApiError> {
    let a = auth_state(&st)?;
    Ok(Json(a.keys.jwks()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_824_000), "2026-11-28T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
