//! berth's own JSON API under `/berth/v1/`: the variant table and the host resolver.

use crate::error::{ApiError, Refusal};
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use berth_auth::Action;
use berth_oci::platform::{ClientRule, Host, Isolation, Platform};
use berth_oci::{Reference, RepoName};
use serde::Deserialize;
use std::net::SocketAddr;

/// A query string that does not parse: what is wrong, without the extractor's own wording.
pub(crate) fn bad_query(e: QueryRejection) -> ApiError {
    let text = e.body_text();
    let text = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    Refusal::BadRequest(format!("invalid query: {text}")).into()
}

/// `?repository=&reference=`
#[derive(Deserialize)]
pub struct InspectQuery {
    repository: String,
    reference: String,
}

fn target(repo: &str, reference: &str) -> Result<(RepoName, Reference), ApiError> {
    let name: RepoName = repo
        .parse()
        .map_err(|e: berth_oci::NameError| Refusal::NameInvalid(e.to_string()))?;
    let r: Reference = super::reference(reference)?;
    Ok((name, r))
}

/// The repository and reference a query names, which the caller must be able to pull. The
/// query is checked before the caller, as the registry routes check the path first.
async fn pullable(
    st: &AppState,
    h: &HeaderMap,
    peer: SocketAddr,
    repository: &str,
    reference: &str,
) -> Result<(RepoName, Reference), ApiError> {
    let (name, r) = target(repository, reference)?;
    super::admin::who_may_pull(st, h, peer, name.as_str())
        .await?
        .require(name.as_str(), Action::Pull)?;
    Ok((name, r))
}

/// `GET /berth/v1/inspect?repository=R&reference=T`: the tag's variant table.
/// Needs pull on the repository.
pub async fn inspect(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    q: Result<Query<InspectQuery>, QueryRejection>,
) -> Result<Json<crate::registry::Inspection>, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let (name, r) = pullable(&st, &h, peer, &q.repository, &q.reference).await?;
    Ok(Json(st.registry.inspect(name.as_str(), &r).await?))
}

/// `?repository=&reference=&platform=os/arch[/variant][:os.version]&isolation=&rule=&features=`
#[derive(Deserialize)]
pub struct ResolveQuery {
    repository: String,
    reference: String,
    platform: String,
    /// `process` or `hyperv`; parsed here so the error lists them.
    #[serde(default)]
    isolation: Option<String>,
    /// `containerd` or `moby`.
    #[serde(default)]
    rule: Option<String>,
    /// Comma-separated host os.features.
    #[serde(default)]
    features: Option<String>,
}

/// `GET /berth/v1/resolve`: which manifest this host would pull, and why.
/// Needs pull on the repository.
pub async fn resolve(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    h: HeaderMap,
    q: Result<Query<ResolveQuery>, QueryRejection>,
) -> Result<Json<crate::registry::ResolveAnswer>, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let (name, r) = pullable(&st, &h, peer, &q.repository, &q.reference).await?;
    let mut platform: Platform = q
        .platform
        .parse()
        .and_then(Platform::with_named_build)
        .map_err(|e: berth_oci::platform::PlatformError| {
            Refusal::BadRequest(format!("invalid platform: {e}"))
        })?;
    if let Some(f) = q.features.filter(|f| !f.is_empty()) {
        platform.os_features = f.split(',').map(str::to_owned).collect();
    }
    let invalid = |e: String| Refusal::BadRequest(format!("invalid query: {e}"));
    let host = Host {
        platform,
        isolation: match q.isolation.as_deref() {
            None | Some("") => Isolation::Process,
            Some(i) => i.parse().map_err(invalid)?,
        },
        rule: match q.rule.as_deref() {
            None | Some("") => ClientRule::Containerd,
            Some(r) => r.parse().map_err(invalid)?,
        },
    };
    Ok(Json(
        st.registry
            .resolve_for_host(name.as_str(), &r, host)
            .await?,
    ))
}
