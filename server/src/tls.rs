//! HTTPS with rustls: certificate and key from PEM files, re-read when they change, so a
//! renewed certificate is picked up without a restart.

use anyhow::Context;
use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

/// How often the files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

fn load_certs(cert: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    Ok(certs)
}

fn load_key(key: &Path) -> anyhow::Result<Arc<dyn rustls::sign::SigningKey>> {
    let der =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    rustls::crypto::ring::sign::any_supported_type(&der)
        .with_context(|| format!("{}: unsupported private key", key.display()))
}

fn load(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    Ok(CertifiedKey::new(load_certs(cert)?, load_key(key)?))
}

/// Reads the certificate and key as `serve` would, naming the key of the file that fails.
pub fn check(cert: &Path, key: &Path) -> anyhow::Result<()> {
    load_certs(cert).map_err(|e| anyhow::anyhow!("invalid value for key \"tls.cert\": {e:#}"))?;
    load_key(key).map_err(|e| anyhow::anyhow!("invalid value for key \"tls.key\": {e:#}"))?;
    Ok(())
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    Some((
        std::fs::metadata(cert).ok()?.modified().ok()?,
        std::fs::metadata(key).ok()?.modified().ok()?,
    ))
}

/// Serves the current certificate; a background task swaps it when the files change.
#[derive(Debug)]
pub struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl Reloading {
    /// Loads the pair now and watches it.
    pub fn start(cert: PathBuf, key: PathBuf) -> anyhow::Result<Arc<Self>> {
        let me = Arc::new(Self {
            current: RwLock::new(Arc::new(load(&cert, &key)?)),
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut seen = mtimes(&cert, &key);
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let Some(me) = weak.upgrade() else { return };
                let now = mtimes(&cert, &key);
                if now.is_none() || now == seen {
                    continue;
                }
                match load(&cert, &key) {
                    Ok(c) => {
                        if let Ok(mut g) = me.current.write() {
                            *g = Arc::new(c);
                        }
                        seen = now;
                        tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                    }
                    // A half-written pair during renewal: keep serving the old one.
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "TLS certificate not reloaded")
                    }
                }
            }
        });
        Ok(me)
    }
}

/// Accepts TLS connections until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    certs: Arc<Reloading>,
    handshake_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let local = tcp.local_addr().unwrap_or(peer);
        let svc = app
            .clone()
            .layer(axum::Extension(ConnectInfo(peer)))
            .layer(axum::Extension(crate::auth::LocalAddr(local)));
        tokio::spawn(async move {
            // A client that never finishes its handshake must not hold the task and socket.
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, client.ip = %peer.ip(), "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(client.ip = %peer.ip(), "TLS handshake timed out");
                    return;
                }
            };
            let conn = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
