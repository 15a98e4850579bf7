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
use rauta_controller::kube_status::StatusWriter;
use rauta_controller::leader::{self, LeaseSettings};
use rauta_controller::metrics;
use rauta_controller::publish::Publisher;
use rauta_controller::server::{ServerOptions, serve_grpc};
use rauta_controller::session_keys::{self, MasterKeys};
use rauta_controller::source::{DirectorySource, kubernetes};
use rauta_controller::standalone::Standalone;
use rauta_controller::state::ControllerState;
use rauta_controller::status_files;
use rauta_controller::translator::DEFAULT_CONTROLLER_NAME;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::info;

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
    /// Namespace of the leader-election Lease (Kubernetes mode); default: $POD_NAMESPACE,
    /// else rauta-system.
    #[arg(long, value_name = "NS", requires = "kubernetes")]
    leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "rauta-controller")]
    leader_election_id: String,
    /// Seconds a leader that stopped renewing keeps the Lease.
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    leader_lease_seconds: u64,
    /// This replica's identity in the Lease; default: $POD_NAME, else the host name.
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
    /// File with a bearer token every discovery and admin call must carry. Reloaded on change.
    #[arg(long, value_name = "FILE")]
    auth_token_file: Option<PathBuf>,
    /// Serve gRPC without TLS. Snapshots carry TLS private keys: use only on loopback or a
    /// network only proxies can reach (the standalone quickstart does).
    #[arg(long, conflicts_with = "tls_cert")]
    plaintext: bool,
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

/// The gRPC server's security from the flags: TLS unless plaintext was asked for.
fn server_options(args: &Args) -> anyhow::Result<ServerOptions> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let identity = ReloadingIdentity::start(cert, key)?;
            let client_ca = args
                .client_ca
                .as_deref()
                .map(ReloadingRoots::start)
                .transpose()?;
            Some(Arc::new(credentials::server_config(identity, client_ca)?))
        }
        _ if args.plaintext => None,
        _ => anyhow::bail!(
            "the discovery channel carries TLS private keys: give --tls-cert and --tls-key \
             (and --client-ca for mTLS), or --plaintext to serve it unencrypted"
        ),
    };
    let token = args
        .auth_token_file
        .as_deref()
        .map(ReloadingToken::start)
        .transpose()?;
    Ok(ServerOptions {
        tls,
        token,
        reflection: !args.no_reflection,
    })
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
    let options = server_options(&args)?;
    match &args.session_key_file {
        Some(path) => {
            let (keys, follow) = session_keys::from_file(path, Arc::clone(&state.cache))?;
            state.cache.set_session_keys(keys);
            tokio::spawn(follow);
        }
        None => {
            state.cache.set_session_keys(MasterKeys::random()?);
            info!(
                "session persistence tokens are signed with a key drawn at start: sessions end \
                 when the controller restarts (give --session-key-file to keep them)"
            );
        }
    }

    let grpc = TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("binding --grpc-listen {}", args.grpc_listen))?;
    info!(
        addr = %grpc.local_addr()?,
        tls = options.tls.is_some(),
        token = options.token.is_some(),
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
    let status_dir = match (&args.status_dir, &args.config_dir) {
        _ if args.no_status_files => None,
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(config)) => Some(config.join("status")),
        (None, None) => None,
    };
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
            let client = kube_client(args.kubeconfig.as_deref()).await?;
            let lease = (!args.no_leader_election).then(|| lease_settings(&args));
            let (leader, leads) = watch::channel(lease.is_none());
            let elector = lease
                .clone()
                .map(|lease| tokio::spawn(leader::run(client.clone(), lease, leader)));
            let writer = StatusWriter::new(
                client.clone(),
                args.controller_name.clone(),
                Arc::clone(&state.metrics),
            );
            let (gone_tx, gone_rx) = mpsc::unbounded_channel();
            let writer = tokio::spawn(writer.run(
                Arc::clone(&state.statuses),
                Arc::clone(&state.registry),
                leads,
                gone_rx,
            ));
            let result = tokio::select! {
                res = server => res.context("gRPC server"),
                () = kubernetes::run(client.clone(), publisher, gone_tx) => Ok(()),
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
            if let Some(lease) = &lease {
                leader::release(client, lease).await;
            }
            result?;
        }
    }
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

fn lease_settings(args: &Args) -> LeaseSettings {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let identity = args
        .identity
        .clone()
        .or_else(|| env("POD_NAME"))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| format!("rauta-controller-{}", std::process::id()));
    LeaseSettings {
        namespace: args
            .leader_election_namespace
            .clone()
            .or_else(|| env("POD_NAMESPACE"))
            .unwrap_or_else(|| "rauta-system".into()),
        name: args.leader_election_id.clone(),
        identity,
        duration: Duration::from_secs(args.leader_lease_seconds),
    }
}
