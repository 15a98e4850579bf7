//! Sends `expect` requests to a Gateway and judges the answers as upstream's
//! `http.ExpectedResponse` comparison does (README.md, "How upstream evaluates an entry").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use super::case::{Expect, ExpectedRequest};

/// Where and how to send one request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The proxy socket serving the Gateway listener.
    pub socket: SocketAddr,
    /// The Gateway address as a client would write it in a URL ("127.0.0.10", "127.0.0.10:8080").
    pub authority: String,
    /// For https: the SNI to send and the PEM certificates to trust.
    pub tls: Option<ClientTls>,
}

#[derive(Debug, Clone)]
pub struct ClientTls {
    pub server_name: String,
    pub trusted_pem: Vec<String>,
    /// (certificate chain, private key) PEM to present when the server asks.
    pub client_cert: Option<(String, String)>,
}

/// Upstream's clients trust the listener certificate itself ("clients trust this cert
/// directly"), and Go accepts wildcards such as `*.org` that webpki refuses. So the runner pins:
/// the server's leaf must be one of the trusted certificates; handshake signatures are still
/// verified with the provider's algorithms.
#[derive(Debug)]
struct PinnedCertificates {
    pinned: Vec<rustls_pki_types::CertificateDer<'static>>,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificates {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn tls_connect(
    tcp: tokio::net::TcpStream,
    tls: &ClientTls,
    h2: bool,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut pinned = Vec::new();
    for pem in &tls.trusted_pem {
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            pinned.push(cert.map_err(|e| e.to_string())?);
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = std::sync::Arc::new(PinnedCertificates {
        pinned,
        provider: std::sync::Arc::clone(&provider),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &tls.client_cert {
        None => config.with_no_client_auth(),
        Some((chain, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate: {e}"))?;
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| format!("client key: {e}"))?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let name = rustls_pki_types::ServerName::try_from(tls.server_name.clone())
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Observed {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    /// The echo JSON, if the answer came from an echo backend.
    pub echo: Option<Value>,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request on a fresh connection (keep-alive off, as upstream).
pub async fn send(expect: &Expect, target: &Target, path: &str) -> Result<Observed, String> {
    let r = &expect.request;
    let host = r.host.clone().unwrap_or_else(|| target.authority.clone());
    let method = r.method.clone().unwrap_or_else(|| "GET".into());
    let set_header: Vec<String> = expect
        .backend_set_response_headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    let h2 = matches!(r.protocol.as_deref(), Some("H2C_PRIOR_KNOWLEDGE" | "H2"));
    let uri = if h2 {
        format!("http://{host}{path}")
    } else {
        path.to_owned()
    };
    let mut builder = Request::builder().method(method.as_str()).uri(uri);
    if !h2 {
        builder = builder.header(http::header::HOST, &host);
    }
    for (k, v) in &r.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder = builder.header("X-Echo-Set-Header", set_header.join(","));
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building request: {e}"))?;

    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(target.socket)
            .await
            .map_err(|e| format!("connect {}: {e}", target.socket))?;
        let resp = match &target.tls {
            Some(tls) => {
                exchange_on(TokioIo::new(tls_connect(tcp, tls, h2).await?), h2, req).await?
            }
            None => exchange_on(TokioIo::new(tcp), h2, req).await?,
        };
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let is_json = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/json");
        let echo = if is_json {
            serde_json::from_slice(&body).ok()
        } else {
            None
        };
        Ok(Observed {
            status,
            version,
            headers,
            echo,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| "request timed out".to_owned())?
}

async fn exchange_on<T>(
    io: T,
    h2: bool,
    req: Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))
    }
}

fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn echoed_header(echo: &Value, name: &str) -> Option<String> {
    let headers = echo.get("headers")?.as_object()?;
    let (_, values) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    let values: Vec<&str> = values
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    Some(values.join(","))
}

fn echo_str<'a>(echo: Option<&'a Value>, field: &str) -> &'a str {
    echo.and_then(|e| e.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The DER bytes of every certificate in a PEM text.
fn pem_der(pem: &str) -> Vec<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

fn squash(s: &str, ignore_whitespace: bool) -> String {
    if ignore_whitespace {
        s.chars().filter(|c| !c.is_whitespace()).collect()
    } else {
        s.to_owned()
    }
}

/// Judges one answer. `path` is the path actually sent (it may carry a mirror request id).
pub fn compare(
    expect: &Expect,
    observed: &Observed,
    path: &str,
    scheme: &str,
) -> Result<(), String> {
    let response = expect.response.clone().unwrap_or_default();
    let statuses = if response.status.is_empty() {
        vec![200]
    } else {
        response.status.clone()
    };
    let timeout_like = |s: u16| s == 408 || s == 504;
    if timeout_like(observed.status) && statuses.iter().any(|s| timeout_like(*s)) {
        return Ok(());
    }
    if !statuses.contains(&observed.status) {
        return Err(format!("status {}, want {statuses:?}", observed.status));
    }
    if let Some(p) = &response.protocol {
        let got = format!("{:?}", observed.version);
        if *p != got {
            return Err(format!("protocol {got}, want {p}"));
        }
    }
    if matches!(observed.status, 200 | 204) {
        let echo = observed.echo.as_ref();
        let expected = expect
            .expected_request
            .clone()
            .unwrap_or_else(|| ExpectedRequest {
                host: expect.request.host.clone(),
                method: expect.request.method.clone(),
                path: Some(expect.request.path.clone()),
                headers: expect.request.headers.clone(),
                sni: expect.request.sni.clone(),
                client_cert: expect.request.client_cert.clone(),
                ..Default::default()
            });
        let want_method = expected.method.clone().unwrap_or_else(|| "GET".into());
        // Upstream assumes the request arrived as sent when the answer is not an echo.
        let sent_method = expect.request.method.as_deref().unwrap_or("GET");
        let seen_method = if echo.is_some() {
            echo_str(echo, "method")
        } else {
            sent_method
        };
        if seen_method != want_method {
            return Err(format!(
                "backend saw method {seen_method:?}, want {want_method}"
            ));
        }
        if let Some(h) = expected.host.as_deref().filter(|h| !h.is_empty())
            && echo_str(echo, "host") != h
        {
            return Err(format!(
                "backend saw host {:?}, want {h:?}",
                echo_str(echo, "host")
            ));
        }
        let want_path = if expect.expected_request.is_some() {
            with_request_id(
                expected.path.as_deref().unwrap_or(""),
                path,
                &expect.request.path,
            )
        } else {
            path.to_owned()
        };
        if echo_str(echo, "path") != want_path {
            return Err(format!(
                "backend saw path {:?}, want {want_path:?}",
                echo_str(echo, "path")
            ));
        }
        let want_ns = expect.namespace.as_deref().unwrap_or("");
        if echo_str(echo, "namespace") != want_ns {
            return Err(format!(
                "answer from namespace {:?}, want {want_ns:?}",
                echo_str(echo, "namespace")
            ));
        }
        let ignore_ws = response.ignore_whitespace;
        for (name, value) in &expected.headers {
            let got = echo.and_then(|e| echoed_header(e, name));
            if got.as_deref().map(|g| squash(g, ignore_ws)) != Some(squash(value, ignore_ws)) {
                return Err(format!(
                    "backend saw header {name}: {got:?}, want {value:?}"
                ));
            }
        }
        check_response_headers(&response, observed)?;
        for name in &expected.absent_headers {
            if let Some(got) = echo.and_then(|e| echoed_header(e, name)) {
                return Err(format!(
                    "backend saw header {name}: {got:?}, want it absent"
                ));
            }
        }
        let backend = expect.backend.as_deref().unwrap_or("");
        if !echo_str(echo, "pod").starts_with(backend) {
            return Err(format!(
                "answered by pod {:?}, want {backend}-*",
                echo_str(echo, "pod")
            ));
        }
        let tls = echo.and_then(|e| e.get("tls"));
        if let Some(sni) = &expected.sni {
            let seen = tls.and_then(|t| t["serverName"].as_str()).unwrap_or("");
            if seen != sni {
                return Err(format!(
                    "backend saw TLS server name {seen:?}, want {sni:?}"
                ));
            }
        }
        if let Some(cert) = &expected.client_cert {
            // Compared as certificates, not text: PEM line endings differ between encoders.
            let want = pem_der(cert);
            let presented = tls
                .and_then(|t| t["peerCertificates"].as_array())
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .any(|p| !want.is_empty() && pem_der(p) == want);
            if !presented {
                return Err("backend did not see the expected client certificate".into());
            }
        }
        return Ok(());
    }
    check_response_headers(&response, observed)?;
    if (300..=308).contains(&observed.status)
        && let Some(redirect) = &expect.redirect
    {
        let location = joined(&observed.headers, "location").ok_or("redirect without Location")?;
        let uri: http::Uri = location
            .parse()
            .map_err(|e| format!("Location {location:?}: {e}"))?;
        let want_scheme = redirect.scheme.clone().unwrap_or_else(|| scheme.to_owned());
        if uri.scheme_str().unwrap_or(scheme) != want_scheme {
            return Err(format!(
                "redirect scheme in {location:?}, want {want_scheme}"
            ));
        }
        if let Some(h) = &redirect.host
            && uri.host() != Some(h.as_str())
        {
            return Err(format!("redirect host in {location:?}, want {h}"));
        }
        let port = uri.port_u16().map(|p| p.to_string());
        match &redirect.port {
            Some(p) => {
                let want = p.as_str().map_or_else(|| p.to_string(), str::to_owned);
                if port.as_deref() != Some(want.as_str()) {
                    return Err(format!("redirect port in {location:?}, want {want}"));
                }
            }
            None => {
                let default = if want_scheme == "https" { "443" } else { "80" };
                if port.as_deref().is_some_and(|p| p != default) {
                    return Err(format!(
                        "redirect port in {location:?}, want none or {default}"
                    ));
                }
            }
        }
        let want_path = redirect.path.clone().unwrap_or_else(|| {
            expect
                .request
                .path
                .split('?')
                .next()
                .unwrap_or("")
                .to_owned()
        });
        if uri.path() != want_path {
            return Err(format!("redirect path in {location:?}, want {want_path}"));
        }
    }
    Ok(())
}

fn check_response_headers(
    response: &super::case::Response,
    observed: &Observed,
) -> Result<(), String> {
    let ws = response.ignore_whitespace;
    for (name, values) in &response.valid_header_values {
        let got = joined(&observed.headers, name).map(|g| squash(&g, ws));
        if !values
            .iter()
            .any(|v| got.as_deref() == Some(squash(v, ws).as_str()))
        {
            return Err(format!(
                "response header {name}: {got:?}, want one of {values:?}"
            ));
        }
    }
    for (name, value) in &response.headers {
        let got = joined(&observed.headers, name).map(|g| squash(&g, ws));
        if got.as_deref() != Some(squash(value, ws).as_str()) {
            return Err(format!("response header {name}: {got:?}, want {value:?}"));
        }
    }
    for name in &response.absent_headers {
        if let Some(got) = joined(&observed.headers, name) {
            return Err(format!("response header {name}: {got:?}, want it absent"));
        }
    }
    Ok(())
}

/// Upstream adds the mirror request id to the expected path too.
fn with_request_id(expected: &str, sent: &str, original: &str) -> String {
    match sent.strip_prefix(original) {
        Some(suffix) if !suffix.is_empty() => {
            let id = suffix.trim_start_matches(['?', '&']);
            format!(
                "{expected}{}{id}",
                if expected.contains('?') { '&' } else { '?' }
            )
        }
        _ => expected.to_owned(),
    }
}

/// Replaces every `{uuid}` with a new random UUID (version 4 layout).
pub fn fresh_placeholders(path: &str) -> String {
    if !path.contains("{uuid}") {
        return path.to_owned();
    }
    let mut out = String::new();
    let mut rest = path;
    while let Some(i) = rest.find("{uuid}") {
        let n: u128 = rand::random::<u128>() & !(0xf << 76) | (0x4 << 76);
        let hex = format!("{n:032x}");
        out.push_str(&rest[..i]);
        out.push_str(&format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        ));
        rest = &rest[i + 6..];
    }
    out.push_str(rest);
    out
}

/// The request path with upstream's mirror request id appended.
pub fn path_with_request_id(path: &str, id: &str) -> String {
    format!(
        "{path}{}gateway-api-conformance-request-id={id}",
        if path.contains('?') { '&' } else { '?' }
    )
}

/// Runs one entry under its `assert` rule; `budget` caps upstream's 30 s.
pub async fn run(
    expect: &Expect,
    target: &Target,
    path: &str,
    scheme: &str,
    budget: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + budget;
    match expect.assert.as_deref().unwrap_or("eventually_consistent") {
        "eventually_consistent" => {
            let mut streak = 0;
            loop {
                // "{uuid}" stands for a fresh random UUID on every attempt (upstream).
                let path = &fresh_placeholders(path);
                let result = match send(expect, target, path).await {
                    Ok(observed) => compare(expect, &observed, path, scheme),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {
                        streak += 1;
                        if streak == 3 {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        if Instant::now() >= deadline {
                            return Err(e);
                        }
                        streak = 0;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        "never_200" => {
            let mut streak = 0;
            while Instant::now() < deadline {
                match send(expect, target, path).await {
                    Ok(o) if o.status == 200 => return Err("got 200, want a failure".into()),
                    Ok(o) if o.status != 408 && o.status != 504 => {
                        streak += 1;
                        if streak == 5 {
                            return Ok(());
                        }
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            Err("no consistent failure answer in time".into())
        }
        "request_error" => match send(expect, target, path).await {
            Ok(o) => Err(format!("got HTTP {}, want the request to fail", o.status)),
            Err(_) => Ok(()),
        },
        other => Err(format!("unknown assert {other:?}")),
    }
}

/// Pod name → backend (Deployment) name: drop the last two dash-separated segments.
pub fn backend_of_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() > 2 {
        parts[..parts.len() - 2].join("-")
    } else {
        pod.to_owned()
    }
}

/// Shares of answers per backend over `n` requests sent `concurrency` at a time.
pub async fn distribution(
    expect: &Expect,
    target: &Target,
    n: usize,
    concurrency: usize,
) -> Result<BTreeMap<String, f64>, String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut sent = 0;
    while sent < n {
        let batch = concurrency.min(n - sent).max(1);
        let mut tasks = Vec::new();
        for _ in 0..batch {
            let (e, t) = (expect.clone(), target.clone());
            tasks.push(tokio::spawn(async move {
                let o = send(&e, &t, &e.request.path).await?;
                compare(&e, &o, &e.request.path, "http")?;
                Ok::<_, String>(
                    o.echo
                        .as_ref()
                        .and_then(|v| v["pod"].as_str())
                        .map(backend_of_pod)
                        .unwrap_or_default(),
                )
            }));
        }
        for t in tasks {
            let backend = t.await.map_err(|e| e.to_string())??;
            *counts.entry(backend).or_default() += 1;
        }
        sent += batch;
    }
    Ok(counts
        .into_iter()
        .map(|(k, v)| (k, v as f64 / n as f64))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_map_to_deployments() {
        assert_eq!(
            backend_of_pod("infra-backend-v1-6d8f7c9b5-x2k4q"),
            "infra-backend-v1"
        );
        assert_eq!(backend_of_pod("a-b"), "a-b");
    }

    #[test]
    fn request_ids_are_appended_like_upstream() {
        assert_eq!(
            path_with_request_id("/m", "u1"),
            "/m?gateway-api-conformance-request-id=u1"
        );
        assert_eq!(
            path_with_request_id("/m?a=1", "u1"),
            "/m?a=1&gateway-api-conformance-request-id=u1"
        );
        let sent = path_with_request_id("/m", "u1");
        assert_eq!(
            with_request_id("/rewritten", &sent, "/m"),
            "/rewritten?gateway-api-conformance-request-id=u1"
        );
    }
}
