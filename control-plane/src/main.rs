//! `rauta-controller` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use rauta_common::process::{LogFormat, init_logging, shutdown_signal};
use rauta_controller::cache::SnapshotCache;
use rauta_controller::metrics::{self, ControllerMetrics};
use rauta_controller::registry::ProxyRegistry;
use rauta_controller::server::serve_grpc;
use rauta_controller::source::DirectorySource;
use rauta_controller::standalone::Standalone;
use rauta_controller::translator::DEFAULT_CONTROLLER_NAME;
use tokio::net::TcpListener;
use tracing::info;

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
    /// GatewayClass spec.controllerName this controller owns.
    #[arg(long, default_value = DEFAULT_CONTROLLER_NAME)]
    controller_name: String,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
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

    let metrics = Arc::new(ControllerMetrics::new().context("registering metrics")?);
    let cache = Arc::new(SnapshotCache::new());
    let registry = Arc::new(ProxyRegistry::default());

    let grpc = TcpListener::bind(args.grpc_listen)
        .await
        .with_context(|| format!("binding --grpc-listen {}", args.grpc_listen))?;
    info!(addr = %grpc.local_addr()?, "gRPC server listening (discovery, admin, reflection, health)");
    if let Some(addr) = args.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --metrics-listen {addr}"))?;
        info!(addr = %listener.local_addr()?, "metrics listening");
        tokio::spawn(metrics::serve(listener, Arc::clone(&metrics)));
    }

    let standalone = Standalone::new(
        DirectorySource::new(&args.config_dir),
        args.controller_name,
        Arc::clone(&cache),
        Arc::clone(&metrics),
    );
    let server = serve_grpc(grpc, cache, registry, metrics);
    tokio::select! {
        res = server => res.context("gRPC server")?,
        res = standalone.run() => res.context("watching the configuration directory")?,
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
}
