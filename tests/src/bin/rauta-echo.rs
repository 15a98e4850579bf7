//! `rauta-echo`: the echo backend as a process (see `rauta_tests::echo`), for the quickstart
//! and for tests that want a separate process.

use std::net::IpAddr;

use anyhow::Context;
use clap::Parser;
use rauta_tests::echo::{EchoIdentity, EchoServer};

/// Echo backend for RAUTA's examples and tests.
#[derive(Debug, Parser)]
#[command(name = "rauta-echo", version)]
struct Args {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// HTTP/1.1 port (0 picks a free one).
    #[arg(long, env = "HTTP_PORT", default_value_t = 3000)]
    http_port: u16,
    /// Cleartext HTTP/2 port (0 picks a free one; absent: off).
    #[arg(long, env = "H2C_PORT")]
    h2c_port: Option<u16>,
    /// Pod name reported in the JSON (`pod`).
    #[arg(long, env = "POD_NAME", default_value = "echo-0-0")]
    pod: String,
    /// Namespace reported in the JSON (`namespace`).
    #[arg(long, env = "NAMESPACE", default_value = "")]
    namespace: String,
    /// Service name reported in the JSON (`service`).
    #[arg(long, env = "SERVICE_NAME", default_value = "")]
    service: String,
    /// Ingress name reported in the JSON (`ingress`).
    #[arg(long, env = "INGRESS_NAME", default_value = "")]
    ingress: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let identity = EchoIdentity {
        pod: args.pod,
        namespace: args.namespace,
        service: args.service,
        ingress: args.ingress,
    };
    let server = EchoServer::start(args.bind, args.http_port, args.h2c_port, identity)
        .await
        .with_context(|| format!("binding ports {} / {:?}", args.http_port, args.h2c_port))?;
    // The first stdout line tells a harness where we listen.
    println!(
        "rauta-echo listening http={}{}",
        server.http,
        server.h2c.map(|a| format!(" h2c={a}")).unwrap_or_default()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
