//! `rauta-controller` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rauta_common::credentials::{self, ReloadingIdentity, ReloadingRoots, ReloadingToken};
use rauta_common::process::{LogFormat, init_logging, shutdown_signal};
use rauta_controller::auth::{Authenticator, KubeReviewer, ReviewCache, ServiceAccount};
use rauta_controller::kube_status::StatusWriter;
use rauta_controller::leader::{self, LeaseSettings};
use rauta_controller::managed_tls::{self, Material};
use rauta_controller::metrics;
use rauta_controller::publish::{PublishThread, Publisher};
use rauta_controller::replicas;
use rauta_controller::server::{ServerError, ServerOptions, serve_grpc};
use rauta_controller::session_keys::{self, MasterKeys};
use rauta_controller::source::{DirectorySource, kubernetes};
use rauta_controller::standalone::Standalone;
use rauta_controller::state::ControllerState;
use rauta_controller::status_files;
use rauta_controller::translator::DEFAULT_CONTROLLER_NAME;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// jemalloc returns freed pages to the system in the background; with the system allocator a
/// translation of a large configuration leaves its peak resident for good.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at start-up: purge freed pages after a second instead of ten, so
/// the memory a large translation or a fleet-wide push needed goes back soon after.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// RAUTA's control plane: translates Gateway API objects into snapshots and streams them to proxies.
#[derive(Debug, Parser)]
#[command(name = "rauta-controller", version)]
struct Args {
    /// Standalone mode: a directory of Gateway API YAML (watched for changes).
    #[arg(long, value_name = "DIR", required_unless_present = "kubernetes")]
    config_dir: Option<PathBuf>,
    /// Kubernetes mode: watch the cluster's Gateway API objects, Services, EndpointSlices and
    /// Secrets, and write status back. Credentials: --kubeconfig, else in-cluster, else
    /// $KUBECONFIG or ~/.kube/config.
    #[arg(long, conflicts_with = "config_dir")]
    kubernetes: bool,
    /// Kubeconfig file for Kubernetes mode.
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the leader-election Lease (Kubernetes mode); default: --namespace.
    #[arg(long, value_name = "NS", requires = "kubernetes")]
    leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "rauta-controller")]
    leader_election_id: String,
    /// Seconds a leader that stopped renewing keeps the Lease.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    leader_lease_seconds: u64,
    /// This replica's identity in the Lease and on its proxy report (ConfigMap
    /// rauta-proxies-<identity> in --namespace); default: $POD_NAME, else the host name. Every
    /// replica needs its own.
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,
    /// Write status without electing a leader (a single replica).
    #[arg(long, requires = "kubernetes")]
    no_leader_election: bool,
    /// Address of the gRPC server (discovery, admin, reflection, health).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18000")]
    grpc_listen: SocketAddr,
    /// Address of the Prometheus endpoint (/metrics, /healthz); off when not given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Where status files are written (one YAML per object); default: DIR/status in standalone
    /// mode, none in Kubernetes mode.
    #[arg(long, value_name = "DIR")]
    status_dir: Option<PathBuf>,
    /// Do not write status files.
    #[arg(long, conflicts_with = "status_dir")]
    no_status_files: bool,
    /// GatewayClass spec.controllerName this controller owns.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// PEM certificate chain of the gRPC server (TLS). Reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC server.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle; proxies must present a client certificate it signed (mTLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// File with a shared bearer token. With --proxy-auth shared-token (the default when this
    /// is given) every discovery and admin call must carry it; with --proxy-auth
    /// service-account it is accepted besides ServiceAccount tokens and allows everything (for
    /// grpcurl). Reloaded on change.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// How discovery and admin callers authenticate: service-account (a Kubernetes
    /// ServiceAccount token for --token-audience, checked with a TokenReview; the default in
    /// Kubernetes mode), shared-token (the token of --auth-token-file; the default when it is
    /// given), none (anyone who reaches the port; the default in standalone mode, and in
    /// Kubernetes mode only when given).
    #[arg(long, value_enum, value_name = "MODE")]
    proxy_auth: Option<ProxyAuth>,
    /// Audience proxies' ServiceAccount tokens must be issued for (a projected token's
    /// audience).
    #[arg(long, value_name = "AUDIENCE", default_value = "rauta-controller")]
    token_audience: String,
    /// ServiceAccount (NAMESPACE/NAME) whose proxies may serve any Gateway (repeatable). Other
    /// ServiceAccounts' proxies may serve the Gateways of their own namespace only.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    proxy_service_account: Vec<ServiceAccount>,
    /// ServiceAccount (NAMESPACE/NAME) that may use the admin service (repeatable). The
    /// shared token always may.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    admin_service_account: Vec<ServiceAccount>,
    /// Serve gRPC without TLS. Snapshots carry TLS private keys: use only on loopback or a
    /// network only proxies can reach (the standalone quickstart does).
    #[arg(long, conflicts_with = "tls_cert")]
    plaintext: bool,
    /// The controller's own namespace (Kubernetes mode): where its CA Secret and ConfigMap,
    /// its Lease and its replicas' proxy reports are; default: $POD_NAMESPACE, else
    /// rauta-system.
    #[arg(long, value_name = "NS", requires = "kubernetes")]
    namespace: Option<String>,
    /// Kubernetes mode without --tls-cert or --plaintext: the Secret (in --namespace) holding
    /// the CA the controller issues its own certificate from, and the session key; created if
    /// absent.
    #[arg(long, value_name = "NAME", default_value = "rauta-controller-ca")]
    ca_secret: String,
    /// The ConfigMap (in --namespace) the CA certificate is published in, under ca.crt: mount
    /// it into proxies as their --controller-ca.
    #[arg(long, value_name = "NAME", default_value = "rauta-controller-ca")]
    ca_config_map: String,
    /// A DNS name of the certificate the controller issues itself (repeatable); default:
    /// rauta-controller, rauta-controller.NS, rauta-controller.NS.svc and
    /// rauta-controller.NS.svc.cluster.local, NS being --namespace.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["tls_cert", "plaintext"])]
    tls_server_name: Vec<String>,
    /// Do not serve gRPC reflection.
    #[arg(long)]
    no_reflection: bool,
    /// File whose content (at least 32 bytes, surrounding whitespace ignored) is the secret
    /// session persistence tokens are signed with. Re-read when it changes; tokens signed with
    /// the previous content keep working for 24 hours. Default: in Kubernetes mode with the
    /// controller's own TLS, a key kept in its Secret; otherwise one drawn at start (sessions
    /// then end when the controller restarts).
    #[arg(long, value_name = "FILE")]
    session_key_file: Option<PathBuf>,
}

/// `--proxy-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProxyAuth {
    ServiceAccount,
    SharedToken,
    None,
}

/// The controller's own namespace.
fn controller_namespace(args: &Args) -> String {
    args.namespace
        .clone()
        .or_else(|| env("POD_NAMESPACE"))
        .unwrap_or_else(|| "rauta-system".into())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// TLS of the gRPC port from the flags: certificate files, the controller's own CA
/// (Kubernetes mode), or plaintext when asked for. The material of the controller's own CA
/// comes back too (its Secret holds the session key).
async fn server_tls(
    args: &Args,
    client: Option<&kube::Client>,
) -> anyhow::Result<(Option<Arc<rustls::ServerConfig>>, Option<Material>)> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let identity = ReloadingIdentity::start(cert, key)?;
        let client_ca = args
            .client_ca
            .as_deref()
            .map(ReloadingRoots::start)
            .transpose()?;
        return Ok((
            Some(Arc::new(credentials::server_config(identity, client_ca)?)),
            None,
        ));
    }
    if args.plaintext {
        return Ok((None, None));
    }
    let Some(client) = client else {
        anyhow::bail!(
            "the discovery channel carries TLS private keys: give --tls-cert and --tls-key \
             (and --client-ca for mTLS), or --plaintext to serve it unencrypted"
        );
    };
    let settings = managed_settings(args);
    let (config, material, reissue) =
        managed_tls::start(client, &settings)
            .await
            .with_context(|| {
                format!(
                    "serving TLS with the controller's own CA (Secret {ns}/{}, ConfigMap {ns}/{}; \
                 or give --tls-cert/--tls-key, or --plaintext)",
                    settings.secret,
                    settings.config_map,
                    ns = settings.namespace
                )
            })?;
    tokio::spawn(reissue);
    Ok((Some(config), Some(material)))
}

fn managed_settings(args: &Args) -> managed_tls::Settings {
    let namespace = controller_namespace(args);
    let server_names = if args.tls_server_name.is_empty() {
        let service = "rauta-controller";
        vec![
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]
    } else {
        args.tls_server_name.clone()
    };
    managed_tls::Settings {
        namespace,
        secret: args.ca_secret.clone(),
        config_map: args.ca_config_map.clone(),
        server_names,
    }
}

/// Who may call Discovery and Admin, from the flags.
fn authenticator(
    args: &Args,
    client: Option<&kube::Client>,
) -> anyhow::Result<(ProxyAuth, Authenticator)> {
    let shared = args
        .auth_token_file
        .as_deref()
        .map(ReloadingToken::start)
        .transpose()?;
    let mode = args.proxy_auth.unwrap_or(match (&shared, client) {
        (Some(_), _) => ProxyAuth::SharedToken,
        (None, Some(_)) => ProxyAuth::ServiceAccount,
        (None, None) => ProxyAuth::None,
    });
    anyhow::ensure!(
        mode == ProxyAuth::ServiceAccount
            || (args.proxy_service_account.is_empty() && args.admin_service_account.is_empty()),
        "--proxy-service-account and --admin-service-account need --proxy-auth service-account"
    );
    let auth = match mode {
        ProxyAuth::None => {
            anyhow::ensure!(
                shared.is_none(),
                "--proxy-auth none and --auth-token-file contradict each other"
            );
            if client.is_some() {
                warn!(
                    "--proxy-auth none: whoever reaches the gRPC port gets every Gateway's \
                     configuration, private keys included"
                );
            }
            Authenticator::none()
        }
        ProxyAuth::SharedToken => Authenticator::shared_token(
            shared.context("--proxy-auth shared-token needs --auth-token-file")?,
        ),
        ProxyAuth::ServiceAccount => {
            let client = client.context(
                "--proxy-auth service-account needs --kubernetes (a TokenReview checks the tokens)",
            )?;
            Authenticator::service_accounts(
                ReviewCache::new(KubeReviewer::new(
                    client.clone(),
                    args.token_audience.clone(),
                )),
                shared,
                args.proxy_service_account.iter().cloned().collect(),
                args.admin_service_account.iter().cloned().collect(),
            )
        }
    };
    Ok((mode, auth))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    if let Some(dir) = &args.config_dir {
        anyhow::ensure!(
            dir.is_dir(),
            "--config-dir {}: not a directory",
            dir.display()
        );
    }

    let state = ControllerState::new().context("registering metrics")?;
    let client = match args.kubernetes {
        true => Some(kube_client(args.kubeconfig.as_deref()).await?),
        false => None,
    };
    let (tls, own_ca) = server_tls(&args, client.as_ref()).await?;
    let (auth_mode, auth) = authenticator(&args, client.as_ref())?;
    let options = ServerOptions {
        tls,
        auth: Arc::new(auth),
        reflection: !args.no_reflection,
    };
    install_session_keys(&args, own_ca.as_ref(), client.as_ref(), &state)?;

    let grpc = TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("binding --grpc-listen {}", args.grpc_listen))?;
    info!(
        addr = %grpc.local_addr()?,
        tls = options.tls.is_some(),
        auth = ?auth_mode,
        reflection = options.reflection,
        "gRPC server listening (discovery, admin, health)"
    );
    if let Some(addr) = args.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics listening");
        tokio::spawn(metrics::serve(listener, Arc::clone(&state.metrics)));
    }
    let status_dir = status_dir(&args);
    if let Some(dir) = status_dir {
        info!(dir = %dir.display(), "writing status files");
        tokio::spawn(status_files::run(
            dir,
            Arc::clone(&state.statuses),
            Arc::clone(&state.registry),
        ));
    }

    let publisher = Publisher::new(args.controller_name.clone(), state.clone());
    let server = serve_grpc(grpc, state.clone(), options);
    match &args.config_dir {
        Some(dir) => {
            let standalone = Standalone::new(DirectorySource::new(dir), publisher);
            tokio::select! {
                res = server => res.context("gRPC server")?,
                res = standalone.run() => res.context("watching the configuration directory")?,
                _ = shutdown_signal() => info!("shutting down"),
            }
        }
        None => {
            let client = client.context("Kubernetes mode without a client")?;
            run_kubernetes(&args, client, state, publisher, server).await?;
        }
    }
    Ok(())
}

/// Signs session persistence tokens with the key from --session-key-file, else the one kept
/// with the controller's own CA in Kubernetes, else a key drawn now.
fn install_session_keys(
    args: &Args,
    own_ca: Option<&managed_tls::Material>,
    client: Option<&kube::Client>,
    state: &ControllerState,
) -> anyhow::Result<()> {
    match (&args.session_key_file, own_ca, client) {
        (Some(path), _, _) => {
            let (keys, follow) = session_keys::from_file(path, Arc::clone(&state.cache))?;
            state.cache.set_session_keys(keys);
            tokio::spawn(follow);
        }
        (None, Some(material), Some(client)) => {
            let keys = MasterKeys::new(material.session_key.clone())?;
            state.cache.set_session_keys(keys.clone());
            tokio::spawn(managed_tls::follow_session_key(
                client.clone(),
                managed_settings(args),
                Arc::clone(&state.cache),
                keys,
            ));
        }
        _ => {
            state.cache.set_session_keys(MasterKeys::random()?);
            info!(
                "session persistence tokens are signed with a key drawn at start: sessions end \
                 when the controller restarts (give --session-key-file to keep them)"
            );
        }
    }
    Ok(())
}

/// Where status files go: --status-dir, else `status/` in the configuration directory.
fn status_dir(args: &Args) -> Option<PathBuf> {
    match (&args.status_dir, &args.config_dir) {
        _ if args.no_status_files => None,
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(config)) => Some(config.join("status")),
        (None, None) => None,
    }
}

/// Kubernetes mode: watch the cluster, elect a leader, write status back, until the server
/// ends or a signal arrives; then hand the lease back.
async fn run_kubernetes(
    args: &Args,
    client: kube::Client,
    state: ControllerState,
    publisher: Publisher,
    server: impl std::future::Future<Output = Result<(), ServerError>>,
) -> anyhow::Result<()> {
    let lease = (!args.no_leader_election).then(|| lease_settings(args));
    let (leader, leads) = watch::channel(lease.is_none());
    // Every replica tells the others about its proxies, so the leader's status covers them.
    let report = replicas::Settings {
        namespace: controller_namespace(args),
        identity: identity(args),
    };
    state.registry.set_replica(&report.identity);
    let reporting = [
        tokio::spawn(replicas::publish(
            client.clone(),
            report.clone(),
            Arc::clone(&state.registry),
            Arc::clone(&state.cache),
        )),
        tokio::spawn(replicas::follow(
            client.clone(),
            report.clone(),
            Arc::clone(&state.registry),
        )),
    ];
    let (elector, _always_leader) = match lease.clone() {
        Some(lease) => (
            Some(tokio::spawn(leader::run(client.clone(), lease, leader))),
            None,
        ),
        // Without election this replica leads for as long as it runs: the sender is kept,
        // or the status writer would take its closing for the end of leadership.
        None => (None, Some(leader)),
    };
    let writer = StatusWriter::new(
        client.clone(),
        args.controller_name.clone(),
        Arc::clone(&state.metrics),
    );
    let (gone_tx, gone_rx) = mpsc::unbounded_channel();
    let publishing = PublishThread::spawn(publisher).context("starting the publishing thread")?;
    let writer = tokio::spawn(writer.run(
        Arc::clone(&state.statuses),
        Arc::clone(&state.registry),
        leads,
        gone_rx,
    ));
    let result = tokio::select! {
        res = server => res.context("gRPC server"),
        res = kubernetes::run(client.clone(), publishing, Arc::clone(&state.metrics), gone_tx) => {
            res.context("watching the Kubernetes API")
        }
        _ = shutdown_signal() => {
            info!("shutting down");
            Ok(())
        }
    };
    // Stop competing and writing first, so the released lease is not taken back
    // and nothing is written after another replica has taken over.
    writer.abort();
    let _ = writer.await;
    if let Some(elector) = elector {
        elector.abort();
        let _ = elector.await;
    }
    for task in reporting {
        task.abort();
        let _ = task.await;
    }
    replicas::withdraw(client.clone(), &report).await;
    if let Some(lease) = &lease {
        leader::release(client, lease).await;
    }
    result?;
    Ok(())
}

async fn kube_client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .with_context(|| format!("reading --kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("using --kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes credentials: not in a pod, and no usable $KUBECONFIG or ~/.kube/config (or give --kubeconfig)")?,
    };
    info!(server = %config.cluster_url, "Kubernetes API");
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// This replica's name: in the Lease, and on its proxy report.
fn identity(args: &Args) -> String {
    args.identity
        .clone()
        .or_else(|| env("POD_NAME"))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| format!("rauta-controller-{}", std::process::id()))
}

fn lease_settings(args: &Args) -> LeaseSettings {
    let identity = identity(args);
    LeaseSettings {
        namespace: args
            .leader_election_namespace
            .clone()
            .unwrap_or_else(|| controller_namespace(args)),
        name: args.leader_election_id.clone(),
        identity,
        duration: Duration::from_secs(args.leader_lease_seconds),
    }
}
