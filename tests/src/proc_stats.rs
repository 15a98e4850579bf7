//! A process's CPU time and memory, read from /proc: what the benchmarks report per process.

/// A process's CPU time and memory, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// utime + stime, milliseconds.
    pub cpu_ms: f64,
    /// VmRSS, MiB.
    pub rss_mib: f64,
    /// RssAnon, MiB: the process's own memory, without the pages of its binary and libraries
    /// that are mapped from files (part of VmRSS, shared with the page cache).
    pub anon_mib: f64,
    /// VmHWM (peak resident since start or the last [`reset_peak`]), MiB.
    pub hwm_mib: f64,
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is 0, utime 11, stime 12 (clock ticks).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Usage {
        cpu_ms: (ticks(11) + ticks(12)) * 1000.0 / clock_ticks(),
        rss_mib: kb("VmRSS:") / 1024.0,
        anon_mib: kb("RssAnon:") / 1024.0,
        hwm_mib: kb("VmHWM:") / 1024.0,
    }
}

/// Starts a new peak-resident measurement (VmHWM) for the process.
pub fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}
