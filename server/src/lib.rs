//! The berth registry server: configuration, the HTTP API and its wiring.
//!
//! Layers, each calling only downward: `routes` (HTTP) → `registry` (OCI rules) →
//! `berth_storage` (bytes and metadata).

pub mod accounts;
pub mod auth;
pub mod config;
pub mod error;
pub mod mirror;
pub mod registry;
pub mod routes;
pub mod tls;

use anyhow::Context;
use axum::http::HeaderValue;
use axum::routing::{any, get, post};
use axum::Router;
use berth_storage::blob::fs::FsStore;
use berth_storage::meta::Meta;
use config::{Config, LogFormat};
use registry::{Registry, Settings};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The registry rules and storage.
    pub registry: Arc<Registry>,
    /// Access control, when `auth.mode = "token"`.
    pub auth: Option<Arc<auth::AuthState>>,
    /// Mirrors and pull-through caches.
    pub mirrors: Arc<mirror::Mirrors>,
    /// Users, robots and permission rules (`accounts`, the admin API).
    pub accounts: Meta,
}

/// The HTTP application. Separate from [`serve`] so tests can drive it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v2/", get(routes::base))
        .route("/v2", get(routes::base))
        .route("/v2/_catalog", get(routes::catalog))
        .route("/v2/{*rest}", any(routes::dispatch))
        .route("/berth/v1/inspect", get(routes::api::inspect))
        .route("/berth/v1/resolve", get(routes::api::resolve))
        .route(
            "/auth/token",
            get(routes::token::get_token).post(routes::token::post_token),
        )
        .route("/auth/jwks.json", get(routes::token::jwks))
        .route(
            "/berth/v1/gc/runs",
            get(routes::gc::runs).post(routes::gc::start),
        )
        .route("/berth/v1/gc/runs/{id}", get(routes::gc::run))
        .route("/berth/v1/quotas", get(routes::quotas::list))
        .route("/berth/v1/quotas/recount", post(routes::quotas::recount))
        .route(
            "/berth/v1/retention/runs",
            get(routes::retention::runs).post(routes::retention::start),
        )
        .route("/berth/v1/retention/runs/{id}", get(routes::retention::run))
        .route("/berth/v1/mirrors", get(routes::mirrors::list))
        .route(
            "/berth/v1/mirrors/{name}",
            get(routes::mirrors::get)
                .put(routes::mirrors::put)
                .delete(routes::mirrors::delete),
        )
        .route(
            "/berth/v1/mirrors/{name}/runs",
            get(routes::mirrors::runs).post(routes::mirrors::run),
        )
        .route(
            "/berth/v1/mirrors/{name}/runs/{id}",
            get(routes::mirrors::run_report),
        )
        .route(
            "/berth/v1/users",
            get(routes::admin::list_users).post(routes::admin::create_user),
        )
        .route(
            "/berth/v1/users/{name}",
            axum::routing::put(routes::admin::update_user).delete(routes::admin::delete_user),
        )
        .route(
            "/berth/v1/robots",
            get(routes::admin::list_robots).post(routes::admin::create_robot),
        )
        .route(
            "/berth/v1/robots/{name}",
            axum::routing::delete(routes::admin::delete_robot),
        )
        .route(
            "/berth/v1/users/{name}/revoke-tokens",
            post(routes::admin::revoke_user_tokens),
        )
        .route(
            "/berth/v1/robots/{name}/revoke-tokens",
            post(routes::admin::revoke_robot_tokens),
        )
        .route(
            "/berth/v1/permissions",
            get(routes::admin::list_permissions).post(routes::admin::create_permission),
        )
        .route(
            "/berth/v1/permissions/{id}",
            axum::routing::delete(routes::admin::delete_permission),
        )
        .route(
            "/berth/v1/verify/workers",
            get(routes::verify::workers).post(routes::verify::register),
        )
        .route("/berth/v1/verify/claim", post(routes::verify::claim))
        .route(
            "/berth/v1/verify/jobs",
            get(routes::verify::jobs).post(routes::verify::verify_now),
        )
        .route("/berth/v1/verify/jobs/{id}", get(routes::verify::job))
        .route(
            "/berth/v1/verify/jobs/{id}/heartbeat",
            post(routes::verify::heartbeat),
        )
        .route(
            "/berth/v1/verify/jobs/{id}/result",
            post(routes::verify::result),
        )
        .route("/berth/v1/verify/status", get(routes::verify::status))
        .method_not_allowed_fallback(|| async {
            error::ApiError::from(error::Refusal::MethodNotAllowed)
        })
        .fallback(|| async { error::ApiError::from(error::Refusal::NoEndpoint) })
        .layer(SetResponseHeaderLayer::overriding(
            axum::http::HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        ))
        .layer(axum::middleware::from_fn(close_after_early_error))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// An error answered before the request body was read leaves unread bytes on the connection;
/// hyper then closes it. Saying `Connection: close` lets the client know instead of finding a
/// broken pipe on its next request.
async fn close_after_early_error(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let has_body = req
        .headers()
        .contains_key(axum::http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Sets up logging to stderr.
pub fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cfg.log.format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// What [`open`] sets up: the registry, which alone reads and writes blobs, manifests, tags
/// and links, and the metadata handle for the services that keep their own tables beside it
/// (accounts and token auth, the mirror's bookkeeping).
pub struct Opened {
    /// The registry.
    pub registry: Arc<Registry>,
    /// The metadata, for those services' own tables.
    pub records: Meta,
}

/// Opens storage and metadata for `cfg`.
pub async fn open(cfg: &Config) -> anyhow::Result<Opened> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let store: Arc<dyn berth_storage::blob::BlobStore> = match cfg.storage.backend {
        config::Backend::Filesystem => Arc::new(
            FsStore::with_sync(&cfg.data_dir, cfg.storage.fsync)
                .context("opening the blob store")?,
        ),
        config::Backend::S3 => Arc::new(
            berth_storage::blob::s3::S3Store::connect(cfg.storage.s3.clone())
                .await
                .context("connecting to S3")?,
        ),
    };
    let meta = Meta::open_sqlite(&cfg.data_dir.join("berth.db"))
        .await
        .context("opening the metadata database")?;
    meta.set_quotas(registry::quota::rules(&cfg.quotas))
        .await
        .context("counting quotas")?;
    let settings = Settings {
        delete_enabled: cfg.storage.delete_enabled,
        manifest_max_bytes: cfg.limits.manifest_max_bytes,
        upload_ttl: Duration::from_secs(cfg.uploads.ttl_secs),
        policies: registry::policy::Policies::new(cfg.validation.clone())
            .context("compiling validation rules")?,
        verify: registry::verification::Policies::new(cfg.verify.clone())
            .context("compiling verification policies")?,
        gc: cfg.gc.clone(),
        immutable: registry::immutable::Rules::new(cfg.tags.clone())
            .context("compiling immutable tag rules")?,
        retention: registry::retention::Rules::new(cfg.retention.clone())
            .context("compiling retention rules")?,
    };
    Ok(Opened {
        registry: Arc::new(Registry::new(store, meta.clone(), settings)),
        records: meta,
    })
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let Opened { registry, records } = open(&cfg).await?;
    match registry.sweep_orphan_uploads().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "removed upload files left by a crash"),
        Err(e) => tracing::warn!(error = %e, "could not sweep orphan uploads"),
    }
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && cfg.auth.mode == config::AuthMode::None {
        tracing::warn!(%addr, "listening beyond loopback without authentication (auth.mode = \"none\")");
    }
    let tls = cfg.tls.cert.is_some();
    let auth = match cfg.auth.mode {
        config::AuthMode::None => None,
        config::AuthMode::Token => Some(Arc::new(
            auth::AuthState::new(
                cfg.auth.clone(),
                &cfg.data_dir,
                records.clone(),
                tls,
                Some(addr),
            )
            .context("setting up token authentication")?,
        )),
    };
    if let Some(a) = &auth {
        a.authorizer.warm_up().await;
        if cfg.auth.realm.is_empty() && addr.ip().is_unspecified() {
            tracing::warn!(
                "auth.realm is not set: challenges name the local address each client connected to, \
                 which clients behind NAT, a proxy or a TLS name cannot use; set auth.realm to the URL \
                 clients reach berth's /auth/token at (e.g. https://registry.example.com/auth/token)"
            );
        }
    }
    let purger = {
        let r = registry.clone();
        let every = Duration::from_secs(cfg.uploads.purge_interval_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match r.purge_stale_uploads().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "expired stale uploads"),
                    Err(e) => tracing::warn!(error = %e, "upload purge failed"),
                }
            }
        })
    };
    let mirrors = Arc::new(
        mirror::Mirrors::new(
            registry.clone(),
            records.clone(),
            cfg.mirrors.clone(),
            cfg.proxy.clone(),
        )
        .context("setting up mirrors")?,
    );
    let scheduler = mirrors.spawn_scheduler(MIRROR_TICK);
    let gc_schedule = cfg
        .gc
        .interval()?
        .map(|every| registry.spawn_gc_schedule(every));
    let retention_schedule = registry
        .settings
        .retention
        .interval()
        .map(|every| registry.spawn_retention_schedule(every));
    let pull_flush = registry.spawn_pull_flush();
    let app = app(AppState {
        registry: registry.clone(),
        auth,
        mirrors,
        accounts: records,
    });
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "berth started");
    if let (Some(cert), Some(key)) = (&cfg.tls.cert, &cfg.tls.key) {
        let certs = tls::Reloading::start(cert.clone(), key.clone())
            .context("loading the TLS certificate")?;
        println!("listening on {addr}");
        let handshake = Duration::from_secs(cfg.tls.handshake_timeout_secs);
        tls::serve(listener, app, certs, handshake, shutdown_signal()).await?;
    } else {
        println!("listening on {addr}");
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        // Graceful shutdown waits for requests in flight, but not for ever: a client
        // streaming a large upload must not keep the process alive past the deadline.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, PerConnection(app)).with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(());
        });
        tokio::select! {
            r = server => r?,
            _ = async {
                if stop_rx.await.is_ok() {
                    tokio::time::sleep(SHUTDOWN_GRACE).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => tracing::warn!("shutdown grace period over; dropping open connections"),
        }
    }
    purger.abort();
    scheduler.abort();
    if let Some(g) = gc_schedule {
        g.abort();
    }
    if let Some(r) = retention_schedule {
        r.abort();
    }
    pull_flush.abort();
    if let Err(e) = registry.flush_pulls().await {
        tracing::warn!(error = %e, "could not write pull times at shutdown");
    }
    registry.close().await;
    tracing::info!("berth stopped");
    Ok(())
}

/// Makes the service of one plain-HTTP connection: the app with the peer's address
/// (`ConnectInfo`) and the local address it connected to ([`auth::LocalAddr`]).
#[derive(Clone)]
struct PerConnection(Router);

type ConnService = axum::middleware::AddExtension<
    axum::middleware::AddExtension<Router, axum::extract::ConnectInfo<std::net::SocketAddr>>,
    auth::LocalAddr,
>;

impl<'a, L> tower::Service<axum::serve::IncomingStream<'a, L>> for PerConnection
where
    L: axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr>,
{
    type Response = ConnService;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<ConnService, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, s: axum::serve::IncomingStream<'a, L>) -> Self::Future {
        use tower::Layer;
        let peer = *s.remote_addr();
        // An accepted socket always has a local address; the fallback only keeps this total.
        let local = auth::LocalAddr(
            s.io()
                .local_addr()
                .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        );
        let svc = axum::Extension(axum::extract::ConnectInfo(peer)).layer(self.0.clone());
        std::future::ready(Ok(axum::Extension(local).layer(svc)))
    }
}

/// How often the mirror scheduler looks for due runs.
const MIRROR_TICK: Duration = Duration::from_secs(15);

/// How long a shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
