//! The TCP and UDP modes of upstream's `echo-basic`, and a stand-in for the `coredns` DNS
//! backend, as tests/conformance/upstream/ECHO.md describes them: what TCPRoute, UDPRoute and
//! TLSRoute traffic reaches in the conformance runner and the relays' end-to-end tests.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::echo::{EchoIdentity, EchoTls};

/// The line a TCP echo sends first on every connection.
pub const TCP_WELCOME: &str = "Gateway API Test TCP Server\n";

/// The answer to `TEST` on one TCP connection.
fn tcp_test_json(identity: &EchoIdentity, tls: Option<(&str, &str)>) -> String {
    let mut v = json!({
        "namespace": identity.namespace, "ingress": identity.ingress,
        "service": identity.service, "pod": identity.pod,
        "tcpport": "3000", "tlsport": "8443", "isTLS": tls.is_some(),
    });
    if let Some((version, server_name)) = tls {
        v["tls"] = json!({"version": version, "serverName": server_name});
    }
    v.to_string()
}

/// Serves one TCP echo connection: the welcome line, then an answer to each command line.
async fn tcp_session<S>(stream: S, identity: Arc<EchoIdentity>, tls: Option<(String, String)>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (read, mut write) = tokio::io::split(stream);
    if write.write_all(TCP_WELCOME.as_bytes()).await.is_err() {
        return;
    }
    let test = tcp_test_json(
        &identity,
        tls.as_ref().map(|(v, s)| (v.as_str(), s.as_str())),
    );
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = match line.trim_end_matches('\r') {
            "TEST" => format!("{test}\n"),
            "IS_TLS" => format!("{}\n", tls.is_some()),
            "PING" => "PONG\n".to_owned(),
            _ => continue,
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A TCP echo instance (`TCP_ECHO_SERVER`): a plain port and optionally a TLS one.
pub struct TcpEcho {
    pub plain: SocketAddr,
    pub tls: Option<SocketAddr>,
    identity: Arc<EchoIdentity>,
    /// Connections accepted on either port.
    accepted: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl TcpEcho {
    /// Listens on `bind` (port 0 picks one) and, with `tls`, on a second port with TLS.
    pub async fn start(
        bind: IpAddr,
        port: u16,
        identity: EchoIdentity,
        tls: Option<&EchoTls>,
    ) -> Result<TcpEcho, String> {
        let identity = Arc::new(identity);
        let accepted = Arc::new(AtomicUsize::new(0));
        let plain = TcpListener::bind((bind, port))
            .await
            .map_err(|e| e.to_string())?;
        let plain_addr = plain.local_addr().map_err(|e| e.to_string())?;
        let (id, count) = (Arc::clone(&identity), Arc::clone(&accepted));
        let mut tasks = vec![tokio::spawn(async move {
            while let Ok((stream, _)) = plain.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(tcp_session(stream, Arc::clone(&id), None));
            }
        })];
        let mut tls_addr = None;
        if let Some(tls) = tls {
            let mut config = (*tls.server_config()?).clone();
            config.alpn_protocols.clear();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind((bind, 0))
                .await
                .map_err(|e| e.to_string())?;
            tls_addr = Some(listener.local_addr().map_err(|e| e.to_string())?);
            let (id, count) = (Arc::clone(&identity), Arc::clone(&accepted));
            tasks.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::Relaxed);
                    let (acceptor, id) = (acceptor.clone(), Arc::clone(&id));
                    tokio::spawn(async move {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let conn = stream.get_ref().1;
                        let version = match conn.protocol_version() {
                            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
                            _ => "TLS 1.3",
                        };
                        let details = (
                            version.to_owned(),
                            conn.server_name().unwrap_or_default().to_owned(),
                        );
                        tcp_session(stream, id, Some(details)).await;
                    });
                }
            }));
        }
        Ok(TcpEcho {
            plain: plain_addr,
            tls: tls_addr,
            identity,
            accepted,
            tasks,
        })
    }

    pub fn identity(&self) -> &EchoIdentity {
        &self.identity
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a UDP instance answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpMode {
    /// echo-basic's `UDP_ECHO_SERVER`: a JSON datagram with the payload and the identity.
    Echo,
    /// The `coredns` whoami stand-in: a DNS answer to every query.
    Dns,
}

/// A UDP echo (or DNS) instance.
pub struct UdpEcho {
    pub addr: SocketAddr,
    identity: Arc<EchoIdentity>,
    received: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl UdpEcho {
    pub async fn start(
        bind: IpAddr,
        port: u16,
        identity: EchoIdentity,
        mode: UdpMode,
    ) -> Result<UdpEcho, String> {
        let socket = UdpSocket::bind((bind, port))
            .await
            .map_err(|e| e.to_string())?;
        let addr = socket.local_addr().map_err(|e| e.to_string())?;
        let identity = Arc::new(identity);
        let received = Arc::new(AtomicUsize::new(0));
        let (id, count) = (Arc::clone(&identity), Arc::clone(&received));
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let answer = match mode {
                    UdpMode::Echo => json!({
                        "request": String::from_utf8_lossy(&buf[..n]),
                        "namespace": id.namespace, "ingress": id.ingress,
                        "service": id.service, "pod": id.pod,
                    })
                    .to_string()
                    .into_bytes(),
                    UdpMode::Dns => match dns_answer(&buf[..n], peer) {
                        Some(a) => a,
                        None => continue,
                    },
                };
                let _ = socket.send_to(&answer, peer).await;
            }
        });
        Ok(UdpEcho {
            addr,
            identity,
            received,
            task,
        })
    }

    pub fn identity(&self) -> &EchoIdentity {
        &self.identity
    }

    /// Datagrams received so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The whoami plugin's answer to a query: the query's ID and question, NOERROR, no answer
/// records and, in the additional section, an A (or AAAA) record holding the client's address.
/// `None` for what is not a query with one question.
pub fn dns_answer(query: &[u8], client: SocketAddr) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || query[4..6] != [0, 1] {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut end = 12;
    loop {
        let len = usize::from(*query.get(end)?);
        end += 1 + len;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
    }
    let question = query.get(12..end + 4)?;
    let mut out = Vec::with_capacity(question.len() + 40);
    out.extend_from_slice(&query[0..2]);
    // QR, the query's opcode and RD; RA; NOERROR.
    out.push(0x80 | (query[2] & 0x79));
    out.push(0x80);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    out.extend_from_slice(question);
    out.extend_from_slice(&[0xc0, 12]); // The question's name.
    let (rtype, data): ([u8; 2], Vec<u8>) = match client.ip() {
        IpAddr::V4(ip) => ([0, 1], ip.octets().to_vec()),
        IpAddr::V6(ip) => ([0, 28], ip.octets().to_vec()),
    };
    out.extend_from_slice(&rtype);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0]); // IN, TTL 0.
    out.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&data);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_answers_keep_the_id_and_question() {
        // ID 0x1234, RD, one question foo.bar.com. A IN.
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["foo", "bar", "com"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let a = dns_answer(&q, "127.0.0.9:5353".parse().unwrap()).unwrap();
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(a[2] & 0x80, 0x80, "a response");
        assert_eq!(a[3] & 0x0f, 0, "NOERROR");
        assert_eq!(&a[12..q.len()], &q[12..]);
        assert_eq!(&a[a.len() - 4..], &[127, 0, 0, 9]);
        assert!(dns_answer(&a, "127.0.0.1:1".parse().unwrap()).is_none());
    }
}
