//! An HTTP echo backend compatible with the Gateway API conformance suite's `echo-basic`
//! (see tests/conformance/upstream/ECHO.md): it answers with a JSON description of the request
//! and its own identity, and can be asked for statuses, delays and response headers.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

/// Who an echo instance claims to be (a Kubernetes pod).
#[derive(Debug, Clone, Default)]
pub struct EchoIdentity {
    pub pod: String,
    pub namespace: String,
    pub service: String,
    pub ingress: String,
}

/// Go's canonical MIME header key: "x-header-set" -> "X-Header-Set".
pub fn canonical_header_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// Parses a Go duration ("500ms", "1s", "1m30s", "1.5h"); `None` if malformed.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    Some(Duration::from_secs_f64(total))
}

fn is_websocket_upgrade(headers: &http::HeaderMap) -> bool {
    let has = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(http::header::UPGRADE, "websocket") && has(http::header::CONNECTION, "upgrade")
}

/// `/ws`: completes the WebSocket handshake and echoes every text and binary message.
fn accept_websocket(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::{Message, Role};
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(message)) = rx.next().await {
            let done = match message {
                Message::Text(_) | Message::Binary(_) => tx.send(message).await.is_err(),
                Message::Close(_) => true,
                _ => false,
            };
            if done {
                break;
            }
        }
    });
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// What the echo server reports about a TLS connection (echo-basic's `tls` field).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsDetails {
    pub version: String,
    pub server_name: String,
    pub negotiated_protocol: String,
    pub cipher_suite: String,
    /// PEM of each certificate the client presented, leaf first.
    pub peer_certificates: Vec<String>,
}

impl TlsDetails {
    fn of(conn: &rustls::ServerConnection) -> TlsDetails {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "",
        };
        TlsDetails {
            version: version.to_owned(),
            server_name: conn.server_name().unwrap_or_default().to_owned(),
            negotiated_protocol: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or_default()
                .to_owned(),
            peer_certificates: conn
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| pem_certificate(c.as_ref()))
                .collect(),
        }
    }
}

/// PEM text of a DER certificate, as Go's pem.EncodeToMemory writes it.
pub fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Server-side TLS settings of an echo instance (echo-basic's TLS_* variables).
pub struct EchoTls {
    /// PEM certificate chain and key (TLS_SERVER_CERT, TLS_SERVER_PRIVKEY).
    pub chain_pem: String,
    pub key_pem: String,
    /// PEM CAs (TLS_CLIENT_CACERTS): client certificates are requested and, if sent, verified.
    pub client_cas_pem: Option<String>,
}

impl EchoTls {
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("key: {e}"))?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_cas_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots
                        .add(cert.map_err(|e| format!("client CAs: {e}"))?)
                        .map_err(|e| format!("client CAs: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CAs: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An echo backend instance: one HTTP/1.1 port, optionally one h2c port and one HTTPS port.
pub struct EchoServer {
    pub http: SocketAddr,
    pub h2c: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    echo: Arc<Echo>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl EchoServer {
    /// Binds and starts serving; ports 0 pick free ones.
    pub async fn start(
        bind: IpAddr,
        http_port: u16,
        h2c_port: Option<u16>,
        identity: EchoIdentity,
    ) -> std::io::Result<EchoServer> {
        let http = TcpListener::bind((bind, http_port)).await?;
        let http_addr = http.local_addr()?;
        let h2c = match h2c_port {
            Some(p) => Some(TcpListener::bind((bind, p)).await?),
            None => None,
        };
        let h2c_addr = h2c.as_ref().map(TcpListener::local_addr).transpose()?;
        let echo = Arc::new(Echo {
            identity,
            http_port: http_addr.port(),
            retries: Mutex::new(HashMap::new()),
            received: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![tokio::spawn(serve(http, Arc::clone(&echo), false))];
        if let Some(h2c) = h2c {
            tasks.push(tokio::spawn(serve(h2c, Arc::clone(&echo), true)));
        }
        Ok(EchoServer {
            http: http_addr,
            h2c: h2c_addr,
            https: None,
            echo,
            tasks,
        })
    }

    /// Also serves HTTPS (HTTP/1.1 or HTTP/2 by ALPN) on `port` (0 picks one).
    pub async fn serve_tls(
        &mut self,
        bind: IpAddr,
        port: u16,
        tls: &EchoTls,
    ) -> Result<SocketAddr, String> {
        let config = tls.server_config()?;
        let listener = TcpListener::bind((bind, port))
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let echo = Arc::clone(&self.echo);
        self.tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, echo) = (acceptor.clone(), Arc::clone(&echo));
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let details = Arc::new(TlsDetails::of(stream.get_ref().1));
                    let service = service_fn(move |req| {
                        Arc::clone(&echo).handle(req, peer, false, Some(Arc::clone(&details)))
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
        self.https = Some(addr);
        Ok(addr)
    }

    pub fn identity(&self) -> &EchoIdentity {
        &self.echo.identity
    }

    /// Raw request targets echoed so far, oldest first (what upstream reads from pod logs).
    pub fn received(&self) -> Vec<String> {
        self.echo
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Echo {
    identity: EchoIdentity,
    http_port: u16,
    /// Retry simulator state: attempts seen per uuid.
    retries: Mutex<HashMap<String, u64>>,
    /// Raw targets of echoed requests.
    received: Mutex<Vec<String>>,
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

impl Echo {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        h2c_only: bool,
        tls: Option<Arc<TlsDetails>>,
    ) -> Result<Response<Body>, Infallible> {
        if req.uri().path() == "/ws" && is_websocket_upgrade(req.headers()) {
            return Ok(accept_websocket(req));
        }
        if h2c_only && req.version() != Version::HTTP_2 {
            return Ok(text(StatusCode::BAD_REQUEST, "Expected h2c request"));
        }
        let raw_target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let collapsed = req.uri().path().replace("//", "/");
        let query = req.uri().query().unwrap_or("");
        if collapsed == "/health" {
            return Ok(text(StatusCode::OK, "OK"));
        }
        if let Some(code) = raw_target.strip_prefix("/status/") {
            if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) {
                let status = code
                    .parse::<u16>()
                    .ok()
                    .and_then(|c| StatusCode::from_u16(c).ok());
                return Ok(status.map_or_else(
                    || text(StatusCode::BAD_REQUEST, "invalid status"),
                    |s| text(s, ""),
                ));
            }
            return Ok(text(StatusCode::BAD_REQUEST, "invalid status"));
        }
        if collapsed.starts_with("/retry") {
            let Some(uuid) = query_param(query, "uuid") else {
                return Ok(text(StatusCode::BAD_REQUEST, "uuid is required"));
            };
            let Some(succeed_after) =
                query_param(query, "succeedAfter").and_then(|v| v.parse::<u64>().ok())
            else {
                return Ok(text(StatusCode::BAD_REQUEST, "succeedAfter is required"));
            };
            let attempt = {
                let mut map = self.retries.lock().unwrap_or_else(PoisonError::into_inner);
                let count = map.entry(uuid.to_owned()).or_insert(0);
                let before = *count;
                if before < succeed_after {
                    *count += 1;
                }
                before
            };
            if attempt < succeed_after {
                if let Some(d) = query_param(query, "delayRetry").and_then(parse_go_duration) {
                    tokio::time::sleep(d).await;
                }
                let status = query_param(query, "responseCode")
                    .and_then(|c| c.parse::<u16>().ok())
                    .and_then(|c| StatusCode::from_u16(c).ok());
                // echo-basic resets the connection when no responseCode is given; this build
                // answers 503 instead (the gateway's retry policy treats both as retriable).
                return Ok(text(status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE), ""));
            }
        }
        if let Some(delay) = query_param(query, "delay") {
            match parse_go_duration(delay) {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    let body = json!({ "message": format!("time: invalid duration \"{delay}\"") })
                        .to_string();
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    return Ok(r);
                }
            }
        }
        tracing::debug!("Echoing back request made to {raw_target} to client ({peer})");
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(raw_target.clone());
        let host = match req.version() {
            Version::HTTP_2 => req.uri().authority().map(|a| a.as_str().to_owned()),
            _ => None,
        }
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in req.headers() {
            if name == http::header::HOST {
                continue;
            }
            headers
                .entry(canonical_header_name(name.as_str()))
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        let proto = match req.version() {
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let set_headers = req
            .headers()
            .get("x-echo-set-header")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let method = req.method().to_string();
        // Drain the request body so HTTP/1.1 keep-alive stays usable.
        let _ = req.into_body().collect().await;
        let mut body = json!({
            "path": raw_target,
            "host": host,
            "method": method,
            "proto": proto,
            "headers": headers,
            "httpPort": self.http_port.to_string(),
            "namespace": self.identity.namespace,
            "ingress": self.identity.ingress,
            "service": self.identity.service,
            "pod": self.identity.pod,
        });
        if let Some(tls) = &tls {
            body["tls"] = json!(tls.as_ref());
        }
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        let mut extra: Vec<(String, String)> = Vec::new();
        for item in set_headers.split(',').filter(|i| !i.trim().is_empty()) {
            if let Some((name, value)) = item.split_once(':') {
                let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
                match extra.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => {
                        v.push(',');
                        v.push_str(&value);
                    }
                    None => extra.push((name, value)),
                }
            }
        }
        for (name, value) in extra {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                h.append(n, v);
            }
        }
        Ok(resp)
    }
}

async fn serve(listener: TcpListener, echo: Arc<Echo>, h2c_only: bool) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let echo = Arc::clone(&echo);
        tokio::spawn(async move {
            let service =
                service_fn(move |req| Arc::clone(&echo).handle(req, peer, h2c_only, None));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalises_like_go() {
        assert_eq!(canonical_header_name("x-header-set"), "X-Header-Set");
        assert_eq!(canonical_header_name("USER-AGENT"), "User-Agent");
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("1x"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("s"), None);
    }
}
