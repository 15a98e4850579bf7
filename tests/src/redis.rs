//! A real Redis server for the tests of global rate limits: Debian's `redis-server`, on a
//! free loopback port, without persistence, killed with the test.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Process, free_port, wait_for_port};

pub struct RedisServer {
    pub process: Process,
    pub port: u16,
    work: PathBuf,
}

/// The redis-server binary; panics with what to install when there is none.
fn binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "redis-server not found: install Debian's redis-server package (scripts/test.sh \
             does, as root)"
        )
    })
}

impl RedisServer {
    pub fn start(work: &Path) -> RedisServer {
        Self::start_on(work, free_port())
    }

    /// A server on `port` (again, after [`RedisServer::stop`]: the same address, empty).
    pub fn start_on(work: &Path, port: u16) -> RedisServer {
        let mut cmd = Command::new(binary());
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(work);
        let log = work.join(format!("redis-{port}.log"));
        cmd.stdout(std::fs::File::create(&log).expect("redis log"));
        let process = Process::spawn("redis-server", cmd, work.join(format!("redis-{port}.err")));
        wait_for_port(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(10),
        );
        RedisServer {
            process,
            port,
            work: work.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its data goes with it).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        *self = RedisServer::start_on(&self.work.clone(), self.port);
    }
}
