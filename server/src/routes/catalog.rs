//! `GET /v2/<name>/tags/list` (end-8a/8b) and `GET /v2/_catalog`, paginated with `n`/`last`
//! and a `Link: <...>; rel="next"` header.

use super::{query_get, query_pairs};
use crate::error::{ApiError, Refusal};
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_oci::RepoName;

/// The most entries one page returns, whatever `n` asks.
const MAX_PAGE: i64 = 10_000;

fn page_size(q: &[(String, String)]) -> Result<i64, ApiError> {
    match query_get(q, "n") {
        None | Some("") => Ok(MAX_PAGE),
        Some(n) => n
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| n.min(MAX_PAGE))
            .ok_or_else(|| Refusal::BadRequest(format!("invalid page size n={n}")).into()),
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn page(items: Vec<String>, n: i64, link_base: &str, key: &str, name: Option<&str>) -> Response {
    let mut items = items;
    let more = items.len() as i64 > n;
    items.truncate(n as usize);
    let body = match name {
        Some(name) => serde_json::json!({ "name": name, key: items }),
        None => serde_json::json!({ key: items }),
    };
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if more {
        if let Some(last) = items.last() {
            let link = format!("<{link_base}?n={n}&last={}>; rel=\"next\"", encode(last));
            if let Ok(v) = link.parse() {
                r.headers_mut().insert(header::LINK, v);
            }
        }
    }
    r
}

/// Tags of a repository, sorted.
pub async fn tags(st: &AppState, name: RepoName, req: Request<Body>) -> Result<Response, ApiError> {
    let q = query_pairs(&req);
    let n = page_size(&q)?;
    let last = query_get(&q, "last");
    if n == 0 {
        // n=0 must answer an empty list, but NAME_UNKNOWN still applies.
        st.registry.tags(name.as_str(), None, 0).await?;
        return Ok(page(vec![], 0, "", "tags", Some(name.as_str())));
    }
    let tags = st.registry.tags(name.as_str(), last, n + 1).await?;
    let base = format!("/v2/{name}/tags/list");
    Ok(page(tags, n, &base, "tags", Some(name.as_str())))
}

/// Repositories that hold at least one manifest, sorted.
pub async fn catalog(State(st): State<AppState>, req: Request<Body>) -> Result<Response, ApiError> {
    let rules = match &st.auth {
        Some(a) => {
            let caller = a.check(req.headers(), req.extensions(), &crate::auth::Need::Catalog)?;
            let p = a.principal(&caller).await?;
            Some((
                a.authorizer
                    .rules(&p.unwrap_or(berth_auth::Principal::Anonymous))
                    .await?,
                caller,
            ))
        }
        None => None,
    };
    let q = query_pairs(&req);
    let n = page_size(&q)?;
    if n == 0 {
        return Ok(page(vec![], 0, "", "repositories", None));
    }
    let mut last = query_get(&q, "last").map(str::to_owned);
    let mut repos = Vec::new();
    // Only what the caller may pull is listed: filter page by page until n+1 are found.
    loop {
        let batch = st
            .registry
            .repositories(last.as_deref(), 1000.max(n + 1))
            .await?;
        let done = (batch.len() as i64) < 1000.max(n + 1);
        last = batch.last().cloned();
        for r in batch {
            let visible = match (&rules, &st.auth) {
                (Some((rules, caller)), Some(a)) => {
                    berth_auth::scope::covers(&rules.allowed(&r), berth_auth::Action::Pull)
                        || a.may(caller, &r, berth_auth::Action::Pull)
                }
                _ => true,
            };
            if visible {
                repos.push(r);
            }
        }
        if done || repos.len() as i64 > n {
            break;
        }
    }
    Ok(page(repos, n, "/v2/_catalog", "repositories", None))
}
