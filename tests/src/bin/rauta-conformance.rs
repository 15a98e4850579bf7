//! `rauta-conformance`: replays the upstream Gateway API conformance cases against the real
//! rauta-controller and rauta-proxy binaries, without a cluster.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rauta_tests::conformance::report::Implementation;
use rauta_tests::conformance::runner::{self, Options};

/// Runs Gateway API conformance cases (upstream's suite, as data) against RAUTA.
#[derive(Debug, Parser)]
#[command(name = "rauta-conformance", version)]
struct Args {
    /// Directory laid out like upstream's suite as data: base/, tests/, cases/.
    #[arg(long, value_name = "DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/upstream"))]
    cases: PathBuf,
    /// Run only this case (repeatable).
    #[arg(long, value_name = "NAME")]
    run: Vec<String>,
    /// Longest wait, in seconds, for any check that must eventually hold.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    budget: u64,
    /// Run the controller in Kubernetes mode: the objects go into an in-process API server
    /// (list, watch, status over TLS) instead of a watched directory.
    #[arg(long)]
    kubernetes: bool,
    /// Write the run's ConformanceReport (upstream's gateway.networking.k8s.io/v1alpha1
    /// format, profiles GATEWAY-HTTP, GATEWAY-GRPC, GATEWAY-TLS) to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// The report's implementation.url.
    #[arg(long, value_name = "URL", default_value = "")]
    report_url: String,
    /// The report's implementation.contact (repeatable).
    #[arg(long, value_name = "CONTACT")]
    report_contact: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rauta-conformance: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        cases_dir: args.cases,
        only: args.run,
        budget: Duration::from_secs(args.budget.max(1)),
        kubernetes: args.kubernetes,
        report: args.report,
        implementation: Implementation {
            organization: "rauta".into(),
            project: "rauta".into(),
            url: args.report_url,
            version: env!("CARGO_PKG_VERSION").into(),
            contact: args.report_contact,
        },
    };
    match runtime.block_on(runner::run(&opts)) {
        Ok(t) if t.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rauta-conformance: {e}");
            ExitCode::from(2)
        }
    }
}
