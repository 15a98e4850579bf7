//! `rauta-l4-load`: the load and the echo backends of the L4 relay benchmark (`benches/l4.sh`).
//! Single-threaded (one tokio current-thread runtime, or a plain loop), so that pinning it to a
//! CPU with taskset holds all of it there. Results go to stdout as one `key=value` line.

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Load generator and echo backends for benches/l4.sh.
#[derive(Debug, Parser)]
#[command(name = "rauta-l4-load", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// TCP echo backend: writes back whatever a connection sends.
    TcpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// UDP echo backend: answers each datagram with itself.
    UdpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// TCP throughput: each connection writes chunks and reads the echo back, with at most
    /// `window` chunks unanswered. Prints `sent=B received=B seconds=S`.
    Tcp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Bytes per write.
        #[arg(long, default_value_t = 16 * 1024)]
        chunk: usize,
        /// Chunks written and not yet echoed, per connection, at most.
        #[arg(long, default_value_t = 4)]
        window: usize,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
    /// UDP closed loop: each flow (a socket of its own, so a source port of its own) keeps
    /// `window` datagrams outstanding; after `resend-ms` without an answer the outstanding ones
    /// count as lost and a new window goes out. Prints `answered=N lost=N seconds=S`.
    Udp {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long, default_value_t = 16)]
        flows: usize,
        #[arg(long, default_value_t = 4)]
        window: u64,
        /// Payload bytes per datagram (at least 8: a sequence number).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(8..))]
        size: u16,
        #[arg(long, default_value_t = 200)]
        resend_ms: u64,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Command::UdpEcho { listen } = args.command {
        return udp_echo(listen);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.command {
            Command::TcpEcho { listen } => tcp_echo(listen).await,
            Command::Tcp {
                target,
                connections,
                chunk,
                window,
                duration,
            } => {
                let start = Instant::now();
                let until = start + Duration::from_secs_f64(duration);
                let mut runs = JoinSet::new();
                for _ in 0..connections {
                    runs.spawn(tcp_connection(
                        target,
                        chunk,
                        (chunk * window) as u64,
                        until,
                    ));
                }
                let (mut sent, mut received) = (0, 0);
                while let Some(run) = runs.join_next().await {
                    let (s, r) = run?.with_context(|| format!("a connection to {target}"))?;
                    sent += s;
                    received += r;
                }
                let seconds = start.elapsed().as_secs_f64();
                println!("sent={sent} received={received} seconds={seconds:.3}");
                Ok(())
            }
            Command::Udp {
                target,
                flows,
                window,
                size,
                resend_ms,
                duration,
            } => {
                let start = Instant::now();
                let until = start + Duration::from_secs_f64(duration);
                let resend = Duration::from_millis(resend_ms);
                let mut runs = JoinSet::new();
                for _ in 0..flows {
                    runs.spawn(udp_flow(target, window, size.into(), resend, until));
                }
                let (mut answered, mut lost) = (0, 0);
                while let Some(run) = runs.join_next().await {
                    let (a, l) = run?.with_context(|| format!("a flow to {target}"))?;
                    answered += a;
                    lost += l;
                }
                let seconds = start.elapsed().as_secs_f64();
                println!("answered={answered} lost={lost} seconds={seconds:.3}");
                Ok(())
            }
            Command::UdpEcho { .. } => unreachable!("served above"),
        }
    })
}

async fn tcp_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn udp_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let socket = StdUdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        // A full send buffer drops the answer, as the network would.
        let _ = socket.send_to(&buf[..n], peer);
    }
}

/// One connection of the TCP load: bytes sent and received until `until`.
async fn tcp_connection(
    target: SocketAddr,
    chunk: usize,
    window: u64,
    until: Instant,
) -> io::Result<(u64, u64)> {
    let mut stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.split();
    let data = vec![0x5a_u8; chunk];
    let mut buf = vec![0u8; 64 * 1024];
    let (mut sent, mut received, mut offset) = (0_u64, 0_u64, 0);
    let deadline = tokio::time::sleep_until(until);
    tokio::pin!(deadline);
    loop {
        // An echo never has more than was sent: more means a relay repeated bytes.
        let Some(unanswered) = sent.checked_sub(received) else {
            return Err(io::Error::other("more bytes echoed than sent"));
        };
        let room = unanswered < window;
        tokio::select! {
            () = &mut deadline => return Ok((sent, received)),
            read = reader.read(&mut buf) => match read? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => received += n as u64,
            },
            written = writer.write(&data[offset..]), if room => {
                let n = written?;
                sent += n as u64;
                offset = (offset + n) % chunk;
            }
        }
    }
}

/// One flow of the UDP load: datagrams answered and lost until `until`.
async fn udp_flow(
    target: SocketAddr,
    window: u64,
    size: usize,
    resend: Duration,
    until: Instant,
) -> io::Result<(u64, u64)> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => "127.0.0.1:0".parse().expect("an address"),
        SocketAddr::V6(_) => "[::1]:0".parse().expect("an address"),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(target).await?;
    let mut out = vec![0u8; size];
    let mut buf = vec![0u8; 65_536];
    // Answers to datagrams before `epoch` (given up as lost) are ignored.
    let (mut next, mut epoch, mut outstanding) = (0_u64, 0_u64, 0_u64);
    let (mut answered, mut lost) = (0, 0);
    while Instant::now() < until {
        while outstanding < window {
            out[..8].copy_from_slice(&next.to_le_bytes());
            socket.send(&out).await?;
            next += 1;
            outstanding += 1;
        }
        let wake = (Instant::now() + resend).min(until);
        match tokio::time::timeout_at(wake, socket.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 8 => {
                let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                if seq >= epoch {
                    answered += 1;
                    outstanding -= 1;
                }
            }
            // Short answers, or an ICMP refusal (nothing listening yet): lost.
            Ok(_) => {}
            Err(_) if Instant::now() >= until => break,
            Err(_) => {
                lost += outstanding;
                outstanding = 0;
                epoch = next;
            }
        }
    }
    Ok((answered, lost))
}
