//! The discovery channel secured: mTLS with certificates from files (rotated without restarts)
//! plus a bearer token. A proxy with the right CA, client certificate and token gets its
//! configuration; one without a client certificate, or with a wrong token, gets nothing; the
//! controller refuses to serve plaintext unless asked to.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, bin, eventually, free_port, http_get,
};
use rauta_tests::manifests::{infra, prefix_route};

struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rauta test CA");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate and key signed by the CA, for `name`, written to DIR/PREFIX.{crt,key}.
    fn issue(&self, dir: &Path, prefix: &str, name: &str, client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (crt, k) = (
            dir.join(format!("{prefix}.crt")),
            dir.join(format!("{prefix}.key")),
        );
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (
            crt.to_string_lossy().into_owned(),
            k.to_string_lossy().into_owned(),
        )
    }
}

/// The controller's certificate as a fresh TLS client (with a client certificate) sees it.
async fn served_certificate(addr: SocketAddr, ca_pem: &str, client: (&str, &str)) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(client.0)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(client.1).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("controller.rauta.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn ready(proxy: &Proxy) -> bool {
    http_get(&format!("http://{}/readyz", proxy.admin), None)
        .await
        .is_ok_and(|r| r.status == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_token_protect_the_discovery_channel() {
    let ws = Workspace::new();
    let dir = ws.path();
    let pki = Pki::new();
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let ca = ca_file.to_string_lossy().into_owned();
    let (server_crt, server_key) = pki.issue(dir, "controller", "controller.rauta.test", false);
    let (client_crt, client_key) = pki.issue(dir, "proxy", "proxy.rauta.test", true);
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let wrong_token = dir.join("wrong-token");
    std::fs::write(&wrong_token, "not-it").unwrap();
    let token = token_file.to_string_lossy().into_owned();

    let echo = Echo::start("echo-1-a", "apps", dir);
    ws.write("infra.yaml", &infra(&[("echo", &[echo.http])]));
    ws.write("route.yaml", &prefix_route("web", "/", "echo"));

    // Plaintext is refused unless asked for.
    let out = Command::new(bin("rauta-controller"))
        .args(["--config-dir"])
        .arg(&ws.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--plaintext"),
        "{out:?}"
    );

    let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let _controller = Controller::start_with(
        &ws.config,
        dir,
        grpc,
        &[
            "--tls-cert",
            &server_crt,
            "--tls-key",
            &server_key,
            "--client-ca",
            &ca,
            "--auth-token-file",
            &token,
            "--no-reflection",
        ],
    );
    let url = format!("https://{grpc}");
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--controller-ca",
            ca.as_str(),
            "--controller-server-name",
            "controller.rauta.test",
        ];
        args.extend_from_slice(extra);
        Proxy::start_with(
            &url,
            "infra/gw",
            free_port() - 80,
            Ipv4Addr::LOCALHOST,
            dir,
            &args,
        )
    };
    let good = start(&[
        "--client-cert",
        &client_crt,
        "--client-key",
        &client_key,
        "--auth-token-file",
        &token,
    ]);
    good.wait_ready().await;
    let r = http_get(&format!("http://{}/", good.listener(80)), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // No client certificate: the handshake fails. Wrong token: the stream is refused.
    let anonymous = start(&["--auth-token-file", &token]);
    let wrong = start(&[
        "--client-cert",
        &client_crt,
        "--client-key",
        &client_key,
        "--auth-token-file",
        wrong_token.to_str().unwrap(),
    ]);
    eventually(Duration::from_secs(10), || async {
        wrong.process.log_text().contains("invalid bearer token")
            && anonymous
                .process
                .log_text()
                .contains("discovery stream failed")
    })
    .await;
    assert!(!ready(&anonymous).await && !ready(&wrong).await);

    // Rotation: new files are served to new connections, no restart; the proxy stays up.
    let before = served_certificate(grpc, &pki.ca_pem, (&client_crt, &client_key)).await;
    pki.issue(dir, "controller", "controller.rauta.test", false);
    eventually(Duration::from_secs(10), || async {
        served_certificate(grpc, &pki.ca_pem, (&client_crt, &client_key)).await != before
    })
    .await;
    assert!(ready(&good).await);
}
