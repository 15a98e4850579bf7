//! Route changes (the suite's tests/routechange): clients send requests back to back while one
//! route is switched, every 200 ms, between two ports of its Service (two echo backends here)
//! and a backendRef filter that adds a response header. Every answer must be a 200; a failed
//! request counts as an error too. Also counted: answers from each backend (the switches took
//! effect) and answers whose header does not go with their backend (a half-applied change).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::env::{Env, EnvOptions, get, http_client};
use crate::manifests as m;

#[derive(Debug, Clone, Default)]
pub struct Change {
    pub iterations: usize,
    pub clients: usize,
    pub requests: usize,
    pub errors: usize,
    pub seconds: f64,
    /// Answers from the backend behind port 80 and the one behind 8080.
    pub from_alternate: usize,
    pub from_default: usize,
    /// Answers whose added header did not match the backend that served them.
    pub mismatched: usize,
    pub first_errors: Vec<String>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicUsize,
    errors: AtomicUsize,
    alternate: AtomicUsize,
    default: AtomicUsize,
    mismatched: AtomicUsize,
    first_errors: std::sync::Mutex<Vec<String>>,
}

pub async fn run(iterations: usize, clients: usize, grace: Duration) -> (Change, Vec<String>) {
    let env = Env::start(EnvOptions {
        name: "change",
        echoes: 2,
        ..Default::default()
    })
    .await;
    let mut problems = Vec::new();
    // Service backend: port 80 to the first echo, 8080 to the second (the suite's one pod
    // listening on two ports).
    env.fake.apply(m::service(
        "default",
        "backend",
        &[("http", 80, 8080), ("http-alt", 8080, 8081)],
    ));
    env.fake.apply(m::endpoint_slice(
        "default",
        "backend",
        "backend-0",
        &[
            ("http", env.echoes[0].http.port()),
            ("http-alt", env.echoes[1].http.port()),
        ],
        "127.0.0.1",
    ));
    let (alternate_pod, default_pod) = (env.echoes[0].pod.clone(), env.echoes[1].pod.clone());
    env.fake.apply(m::change_route(false));
    let client = http_client();
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        if get(&client, env.http, "route.example.com", "/0")
            .await
            .is_ok_and(|a| a.status == 200 && a.pod == default_pod)
        {
            break;
        }
        if Instant::now() > ready {
            problems.push("the route was never served".to_owned());
            return (Change::default(), problems);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
        let (alternate_pod, default_pod) = (alternate_pod.clone(), default_pod.clone());
        let proxy = env.http;
        tasks.push(tokio::spawn(async move {
            let mut client = http_client();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Odd clients start a new connection every 100 requests: changes must not
                // break connections being set up either.
                if c % 2 == 1 && n.is_multiple_of(100) {
                    client = http_client();
                }
                let path = format!("/{c}/{n}");
                counters.requests.fetch_add(1, Ordering::Relaxed);
                let answer = get(&client, proxy, "route.example.com", &path).await;
                let problem = match answer {
                    Ok(a) if a.status == 200 => {
                        if a.pod == alternate_pod {
                            counters.alternate.fetch_add(1, Ordering::Relaxed);
                            if !a.added_header {
                                counters.mismatched.fetch_add(1, Ordering::Relaxed);
                            }
                        } else if a.pod == default_pod {
                            counters.default.fetch_add(1, Ordering::Relaxed);
                            if a.added_header {
                                counters.mismatched.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None
                    }
                    Ok(a) => Some(format!("{path}: status {}", a.status)),
                    Err(e) => Some(format!("{path}: {e}")),
                };
                if let Some(p) = problem {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    let mut first = counters
                        .first_errors
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if first.len() < 5 {
                        first.push(p);
                    }
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for r in 0..iterations {
        env.fake.apply(m::change_route(r % 2 == 0));
        tokio::time::sleep(grace).await;
    }
    // Traffic goes on a little after the last change, as it propagates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let out = Change {
        iterations,
        clients,
        requests: counters.requests.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        from_alternate: counters.alternate.load(Ordering::Relaxed),
        from_default: counters.default.load(Ordering::Relaxed),
        mismatched: counters.mismatched.load(Ordering::Relaxed),
        first_errors: counters
            .first_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    };
    eprintln!(
        "  route changes: {} changes, {} requests from {} clients in {:.1} s, {} errors, {} / {} answers from the two backends, {} with the wrong header",
        out.iterations,
        out.requests,
        out.clients,
        out.seconds,
        out.errors,
        out.from_alternate,
        out.from_default,
        out.mismatched
    );
    for e in &out.first_errors {
        eprintln!("    {e}");
    }
    if out.from_alternate == 0 || out.from_default == 0 {
        problems.push("the changes never moved traffic between the backends".to_owned());
    }
    if let Err(e) = env.check_alive() {
        problems.push(e);
    }
    (out, problems)
}
