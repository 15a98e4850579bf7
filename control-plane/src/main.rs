//! `rauta-controller` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use rauta_common::credentials::{self, ReloadingIdentity, ReloadingRoots, ReloadingToken};
use rauta_common::process::{LogFormat, init_logging, shutdown_signal};
use rauta_controller::metrics;
use rauta_controller::server::{ServerOptions, serve_grpc};
use rauta_controller::source::DirectorySource;
use rauta_controller::standalone::Standalone;
use rauta_controller::state::ControllerState;
use rauta_controller::status_files;
use rauta_controller::translator::DEFAULT_CONTROLLER_NAME;
use tokio::net::TcpListener;
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
    #[arg(long, value_name = "DIR")]
    config_dir: PathBuf,
    /// Address of the gRPC server (discovery, admin, reflection, health).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:18000")]
    grpc_listen: SocketAddr,
    /// Address of the Prometheus endpoint (/metrics, /healthz); off when not given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Where status files are written (one YAML per object); default: DIR/status.
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
    anyhow::ensure!(
        args.config_dir.is_dir(),
        "--config-dir {}: not a directory",
        args.config_dir.display()
    );

    let state = ControllerState::new().context("registering metrics")?;
    let options = server_options(&args)?;

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
    if !args.no_status_files {
        let dir = args
            .status_dir
            .unwrap_or_else(|| args.config_dir.join("status"));
        info!(dir = %dir.display(), "writing status files");
        tokio::spawn(status_files::run(
            dir,
            Arc::clone(&state.statuses),
            Arc::clone(&state.registry),
        ));
    }

    let standalone = Standalone::new(
        DirectorySource::new(&args.config_dir),
        args.controller_name,
        state.clone(),
    );
    let server = serve_grpc(grpc, state, options);
    tokio::select! {
        res = server => res.context("gRPC server")?,
        res = standalone.run() => res.context("watching the configuration directory")?,
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
}
