//! `rauta-otlp-sink`: an OTLP/gRPC trace receiver that counts the spans it gets and keeps
//! nothing, for the tracing rows of `benches/proxy.sh` (a proxy exporting spans needs a
//! collector that keeps up, or it measures the collector). Prints the span count to stdout
//! every `--report-every` seconds and when it gets SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use rauta_common::api::otlp::trace_service_server::{TraceService, TraceServiceServer};
use rauta_common::api::otlp::{ExportTraceServiceRequest, ExportTraceServiceResponse};

#[derive(Debug, Parser)]
#[command(name = "rauta-otlp-sink", version)]
struct Args {
    /// Where to listen for OTLP/gRPC.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: SocketAddr,
    /// Seconds between count lines (0: only at exit).
    #[arg(long, default_value_t = 0)]
    report_every: u64,
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let count: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(count as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink = Sink::default();
    let spans = Arc::clone(&sink.spans);
    if args.report_every > 0 {
        let spans = Arc::clone(&spans);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(args.report_every));
            loop {
                tick.tick().await;
                println!("spans={}", spans.load(Ordering::Relaxed));
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink))
        .serve_with_shutdown(args.listen, async move {
            term.recv().await;
        })
        .await?;
    println!("spans={}", spans.load(Ordering::Relaxed));
    Ok(())
}
