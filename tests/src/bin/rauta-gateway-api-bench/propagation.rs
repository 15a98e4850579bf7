//! Route propagation (the suite's tests/probe): a route is created, and requests for its host
//! and path go to the proxy until one is answered 200; the time from creating it is the
//! propagation time. A 404 (not there yet) is expected; any other answer, or a failed request,
//! is an error. Routes come one after the other, at several counts of routes already there.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::env::{Env, EnvOptions, HttpClient, get, http_client, percentile};
use crate::manifests as m;

/// One probed route.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub ms: f64,
    pub errors: usize,
    /// Not answered 200 within the limit.
    pub timed_out: bool,
}

/// Probes at one count of routes already there.
#[derive(Debug, Clone, Default)]
pub struct Level {
    pub existing: usize,
    pub probes: Vec<Probe>,
}

impl Level {
    pub fn ms(&self) -> Vec<f64> {
        self.probes
            .iter()
            .filter(|p| !p.timed_out)
            .map(|p| p.ms)
            .collect()
    }

    pub fn errors(&self) -> usize {
        self.probes.iter().map(|p| p.errors).sum()
    }

    pub fn timeouts(&self) -> usize {
        self.probes.iter().filter(|p| p.timed_out).count()
    }
}

/// Creates route `index` and probes it until 200, every 5 ms as the suite does.
pub async fn probe(
    env_fake: &rauta_tests::fake_kube::FakeApiServer,
    client: &HttpClient,
    proxy: SocketAddr,
    index: usize,
) -> Probe {
    let host = format!("{index}-route.example.com");
    let path = format!("/{index}");
    let started = Instant::now();
    env_fake.apply(m::probe_route(index));
    let mut errors = 0;
    let deadline = started + Duration::from_secs(60);
    loop {
        match get(client, proxy, &host, &path).await {
            Ok(a) if a.status == 200 => {
                return Probe {
                    ms: started.elapsed().as_secs_f64() * 1e3,
                    errors,
                    timed_out: false,
                };
            }
            Ok(a) if a.status == 404 => {}
            Ok(a) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("  route {index}: answered {} while propagating", a.status);
                }
            }
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("  route {index}: request failed while propagating: {e}");
                }
            }
        }
        if Instant::now() > deadline {
            return Probe {
                ms: started.elapsed().as_secs_f64() * 1e3,
                errors,
                timed_out: true,
            };
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until route `index` answers 200 (routes created in bulk are all there).
pub async fn wait_served(env: &Env, client: &HttpClient, index: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let (host, path) = (format!("{index}-route.example.com"), format!("/{index}"));
    while Instant::now() < deadline {
        if get(client, env.http, &host, &path)
            .await
            .is_ok_and(|a| a.status == 200)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub async fn run(levels: &[usize], probes: usize) -> (Vec<Level>, Vec<String>) {
    let env = Env::start(EnvOptions {
        name: "propagation",
        ..Default::default()
    })
    .await;
    let client = http_client();
    let mut problems = Vec::new();
    let mut next = 0usize;
    let mut out = Vec::new();
    let mut levels = levels.to_vec();
    levels.sort_unstable();
    for existing in levels {
        if existing > next {
            for i in next..existing {
                env.fake.apply(m::probe_route(i));
            }
            next = existing;
            if !wait_served(&env, &client, next - 1, Duration::from_secs(300)).await {
                problems.push(format!("the first {existing} routes were never all served"));
                return (out, problems);
            }
            // Let the status writes of the bulk settle, as the suite waits after its
            // initial routes.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let mut level = Level {
            existing: next,
            ..Default::default()
        };
        for _ in 0..probes {
            level
                .probes
                .push(probe(&env.fake, &client, env.http, next).await);
            next += 1;
        }
        let ms = level.ms();
        eprintln!(
            "  propagation at {} routes: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms, {} errors, {} timed out",
            level.existing,
            percentile(&ms, 50.0),
            percentile(&ms, 90.0),
            percentile(&ms, 100.0),
            level.errors(),
            level.timeouts()
        );
        out.push(level);
    }
    if let Err(e) = env.check_alive() {
        problems.push(e);
    }
    (out, problems)
}
