//! The discovery channel secured: mTLS with certificates from files (rotated without restarts)
//! plus a bearer token. A proxy with the right CA, client certificate and token gets its
//! configuration; one without a client certificate, or with a wrong token, gets nothing; the
//! controller refuses to serve plaintext unless asked to.
//!
//! In Kubernetes mode, by default: TLS with a certificate from the controller's own CA (its
//! certificate published in a ConfigMap the proxies trust), and ServiceAccount tokens checked
//! with TokenReviews, each ServiceAccount allowed the Gateways of its namespace (or any, if
//! named by a flag).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rauta_common::api::v1::ListProxiesRequest;
use rauta_common::api::v1::admin_client::AdminClient;
use rauta_tests::fake_kube::{API_SERVER_AUDIENCE, FakeApiServer};
use rauta_tests::harness::{
    Controller, Echo, Proxy, Workspace, bin, eventually, eventually_served_by, free_port, http_get,
    tls_channel,
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

/// The name proxies use for the controller (the Service's DNS name in the controller's
/// certificate).
const CONTROLLER_NAME: &str = "rauta-controller.rauta-system.svc";

/// An admin client over TLS carrying `token`.
async fn admin_with(
    controller: &Controller,
    ca_pem: &str,
    token: Option<&str>,
) -> AdminClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    let channel = tls_channel(controller.grpc, ca_pem, CONTROLLER_NAME)
        .await
        .unwrap();
    let header = token.map(|t| format!("Bearer {t}"));
    AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        Ok(req)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_proxies_authenticate_with_service_account_tokens_over_the_controllers_tls() {
    let ws = Workspace::new();
    let dir = ws.path();
    let echo = Echo::start("echo-1-a", "apps", dir);
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&infra(&[("echo", &[echo.http])]));
    fake.apply_yaml(&prefix_route("web", "/", "echo"));
    let aud = ["rauta-controller"];
    let tokens = [
        // The Gateway's own namespace: allowed.
        (
            "same-namespace",
            fake.issue_token("infra", "gw-proxy", &aud),
        ),
        // The shared fleet, named by --proxy-service-account: allowed.
        (
            "fleet",
            fake.issue_token("rauta-system", "rauta-proxy", &aud),
        ),
        // Another namespace's ServiceAccount: authenticated, not allowed this Gateway.
        ("other-namespace", fake.issue_token("apps", "proxy", &aud)),
        // A genuine token for the API server (what every pod has), not for the controller.
        (
            "api-server-audience",
            fake.issue_token("infra", "gw-proxy", &[API_SERVER_AUDIENCE]),
        ),
        (
            "made-up",
            "eyJhbGciOiJub25lIn0.e30.bm90LWEtdG9rZW4".to_owned(),
        ),
    ];
    let inspector = fake.issue_token("ops", "inspector", &aud);

    let controller = Controller::start_kubernetes_secure(
        &fake.kubeconfig(dir),
        dir,
        &[
            "--namespace",
            "rauta-system",
            "--proxy-service-account",
            "rauta-system/rauta-proxy",
            "--admin-service-account",
            "ops/inspector",
        ],
    );
    // The CA the controller made is published for proxies.
    let secret = fake
        .object("v1", "Secret", "rauta-system", "rauta-controller-ca")
        .expect("the controller's CA Secret");
    assert!(secret["data"]["ca.key"].is_string() && secret["data"]["session.key"].is_string());
    let config_map = fake
        .object("v1", "ConfigMap", "rauta-system", "rauta-controller-ca")
        .expect("the CA ConfigMap");
    let ca_pem = config_map["data"]["ca.crt"].as_str().unwrap().to_owned();
    let ca_file = dir.join("controller-ca.crt");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let ca = ca_file.to_string_lossy().into_owned();

    let url = format!("https://{}", controller.grpc);
    let start = |token: Option<&str>| {
        let mut args = vec![
            "--controller-ca",
            ca.as_str(),
            "--controller-server-name",
            CONTROLLER_NAME,
        ];
        let file;
        if let Some(token) = token {
            file = dir.join(format!("token-{}", free_port()));
            std::fs::write(&file, token).unwrap();
            args.extend(["--auth-token-file", file.to_str().unwrap()]);
            return Proxy::start_with(
                &url,
                "infra/gw",
                free_port() - 80,
                Ipv4Addr::LOCALHOST,
                dir,
                &args,
            );
        }
        Proxy::start_with(
            &url,
            "infra/gw",
            free_port() - 80,
            Ipv4Addr::LOCALHOST,
            dir,
            &args,
        )
    };
    let proxies: Vec<(&str, Proxy)> = tokens
        .iter()
        .map(|(what, token)| (*what, start(Some(token))))
        .chain([("no-token", start(None))])
        .collect();
    for (what, proxy) in &proxies[..2] {
        proxy.wait_ready().await;
        let url = format!("http://{}/", proxy.listener(80));
        eventually_served_by(&url, &echo.pod, Duration::from_secs(10)).await;
        assert!(
            proxy.process.log_text().contains("discovery stream open"),
            "{what}"
        );
    }
    let refused = [
        ("other-namespace", "may not serve Gateway infra/gw"),
        ("api-server-audience", "invalid bearer token"),
        ("made-up", "invalid bearer token"),
        ("no-token", "missing authorization"),
    ];
    for (what, message) in refused {
        let proxy = &proxies.iter().find(|(w, _)| *w == what).unwrap().1;
        eventually(Duration::from_secs(10), || async {
            proxy.process.log_text().matches(message).count() >= 2
        })
        .await;
        assert!(!ready(proxy).await, "{what} got a configuration");
    }
    let log = controller.process.log_text();
    assert!(log.contains("subscription refused"), "{log}");

    // A fleet reconnecting is not a TokenReview per stream: the refused proxies keep trying
    // (every half second at most), the answers about their tokens are reused.
    let reviews = fake.token_reviews();
    let attempts = |p: &Proxy| {
        p.process
            .log_text()
            .matches("discovery stream failed")
            .count()
    };
    let before: usize = proxies.iter().map(|(_, p)| attempts(p)).sum();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: usize = proxies.iter().map(|(_, p)| attempts(p)).sum();
    assert!(
        after >= before + 8,
        "proxies retried {} times",
        after - before
    );
    assert!(
        fake.token_reviews() <= reviews + 2,
        "{} TokenReviews for {} attempts",
        fake.token_reviews() - reviews,
        after - before
    );

    // The admin service: only for the ServiceAccount named for it, over the same TLS.
    let listed = admin_with(&controller, &ca_pem, Some(&inspector))
        .await
        .list_proxies(ListProxiesRequest::default())
        .await
        .expect("the inspector may list proxies")
        .into_inner()
        .proxies;
    let identities: std::collections::BTreeSet<&str> =
        listed.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(
        identities,
        [
            "serviceaccount infra/gw-proxy",
            "serviceaccount rauta-system/rauta-proxy"
        ]
        .into(),
        "{listed:?}"
    );
    for (token, code) in [
        (Some(tokens[0].1.as_str()), tonic::Code::PermissionDenied),
        (None, tonic::Code::Unauthenticated),
    ] {
        let status = admin_with(&controller, &ca_pem, token)
            .await
            .list_proxies(ListProxiesRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
    }
    // Nothing but that CA's certificate is trusted: the controller's is not for other names.
    assert!(
        tls_channel(controller.grpc, &ca_pem, "elsewhere.example")
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_asks_for_tokens_even_in_plaintext_and_refuses_nonsense() {
    let ws = Workspace::new();
    let dir = ws.path();
    let echo = Echo::start("echo-1-a", "apps", dir);
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&infra(&[("echo", &[echo.http])]));
    fake.apply_yaml(&prefix_route("web", "/", "echo"));
    let kubeconfig = fake.kubeconfig(dir);
    let shared = dir.join("shared-token");
    std::fs::write(&shared, "shared-s3cret").unwrap();
    let shared = shared.to_string_lossy().into_owned();

    // Flags that would leave the port open or cannot work are refused at start.
    for (flags, complaint) in [
        (&["--proxy-auth", "service-account"][..], None),
        (
            &["--kubernetes", "--proxy-auth", "shared-token"][..],
            Some("--auth-token-file"),
        ),
        (
            &[
                "--kubernetes",
                "--proxy-auth",
                "none",
                "--auth-token-file",
                &shared,
            ][..],
            Some("contradict"),
        ),
        (
            &[
                "--kubernetes",
                "--proxy-service-account",
                "a/b",
                "--proxy-auth",
                "none",
            ][..],
            Some("--proxy-service-account"),
        ),
    ] {
        let mut cmd = Command::new(bin("rauta-controller"));
        if !flags.contains(&"--kubernetes") {
            cmd.arg("--config-dir").arg(&ws.config);
        } else {
            cmd.arg("--kubeconfig").arg(&kubeconfig);
        }
        let out = cmd.args(flags).arg("--plaintext").output().unwrap();
        assert!(!out.status.success(), "{flags:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(complaint.unwrap_or("--kubernetes")),
            "{flags:?}: {stderr}"
        );
    }

    // --plaintext alone in Kubernetes mode still wants ServiceAccount tokens.
    let controller = Controller::start_kubernetes_secure(&kubeconfig, dir, &["--plaintext"]);
    let anonymous = Proxy::start(&controller.url(), "infra/gw", free_port() - 80, dir);
    let token_file = dir.join("token");
    std::fs::write(
        &token_file,
        fake.issue_token("infra", "p", &["rauta-controller"]),
    )
    .unwrap();
    let token = token_file.to_string_lossy().into_owned();
    let good = Proxy::start_with(
        &controller.url(),
        "infra/gw",
        free_port() - 80,
        Ipv4Addr::LOCALHOST,
        dir,
        &["--auth-token-file", &token],
    );
    good.wait_ready().await;
    eventually(Duration::from_secs(10), || async {
        anonymous
            .process
            .log_text()
            .contains("missing authorization")
    })
    .await;
    assert!(!ready(&anonymous).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_replicas_converge_on_one_ca_and_session_key() {
    let ws = Workspace::new();
    let dir = ws.path();
    let echo = Echo::start("echo-1-a", "apps", dir);
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&infra(&[("echo", &[echo.http])]));
    fake.apply_yaml(&rauta_tests::manifests::http_route(
        "apps",
        "sticky",
        ("infra", "gw"),
        &[],
        "  - sessionPersistence: {sessionName: s}\n    backendRefs: [{name: echo, port: 8080}]\n",
    ));
    let kubeconfig = fake.kubeconfig(dir);
    let flags = [
        "--namespace",
        "rauta-system",
        "--no-leader-election",
        "--admin-service-account",
        "ops/inspector",
    ];
    // Three replicas starting at once race to create the Secret.
    let replicas: Vec<Controller> = std::thread::scope(|s| {
        let starting: Vec<_> = (0..3)
            .map(|_| s.spawn(|| Controller::start_kubernetes_secure(&kubeconfig, dir, &flags)))
            .collect();
        starting.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let config_map = fake
        .object("v1", "ConfigMap", "rauta-system", "rauta-controller-ca")
        .expect("the CA ConfigMap");
    let ca_pem = config_map["data"]["ca.crt"].as_str().unwrap().to_owned();
    let secret = fake
        .object("v1", "Secret", "rauta-system", "rauta-controller-ca")
        .unwrap();
    use base64::Engine;
    let in_secret = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["ca.crt"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(in_secret).unwrap(), ca_pem);

    // Every replica serves a certificate of that CA, and signs sessions with the same key: the
    // sticky route table (its keys included) has the same content version everywhere.
    let inspector = fake.issue_token("ops", "inspector", &["rauta-controller"]);
    let mut versions = std::collections::BTreeSet::new();
    for replica in &replicas {
        let mut admin = admin_with(replica, &ca_pem, Some(&inspector)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let version = loop {
            let request = rauta_common::api::v1::GetSnapshotRequest {
                gateway: "infra/gw".into(),
                type_url: "route_table".into(),
                name: "http-80".into(),
            };
            match admin.get_snapshot(request).await {
                Ok(s) => break s.into_inner().resources[0].version.clone(),
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        versions.insert(version);
    }
    assert_eq!(versions.len(), 1, "{versions:?}");
    // One made the CA; the others read what it made.
    let made = replicas
        .iter()
        .filter(|r| r.process.log_text().contains("created a CA"))
        .count();
    assert_eq!(made, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_its_token_expires_and_the_proxy_returns_with_the_renewed_one() {
    let ws = Workspace::new();
    let dir = ws.path();
    let echo = Echo::start("echo-1-a", "apps", dir);
    let fake = FakeApiServer::start().await;
    fake.apply_yaml(&infra(&[("echo", &[echo.http])]));
    fake.apply_yaml(&prefix_route("web", "/", "echo"));
    let controller =
        Controller::start_kubernetes_secure(&fake.kubeconfig(dir), dir, &["--plaintext"]);
    let aud = ["rauta-controller"];
    let token_file = dir.join("token");
    let short = fake.issue_token_for("infra", "p", &aud, Duration::from_secs(4));
    std::fs::write(&token_file, &short).unwrap();
    let token = token_file.to_string_lossy().into_owned();
    let proxy = Proxy::start_with(
        &controller.url(),
        "infra/gw",
        free_port() - 80,
        Ipv4Addr::LOCALHOST,
        dir,
        &["--auth-token-file", &token],
    );
    proxy.wait_ready().await;
    // The kubelet renews the projected token before it expires.
    std::fs::write(&token_file, fake.issue_token("infra", "p", &aud)).unwrap();
    eventually(Duration::from_secs(25), || async {
        controller
            .process
            .log_text()
            .contains("credentials of the stream expired")
    })
    .await;
    eventually(Duration::from_secs(10), || async {
        proxy
            .process
            .log_text()
            .matches("discovery stream open")
            .count()
            >= 2
    })
    .await;
    assert!(ready(&proxy).await);
    let r = http_get(&format!("http://{}/", proxy.listener(80)), None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // The expired token itself is refused from now on.
    let stale_file = dir.join("stale-token");
    std::fs::write(&stale_file, &short).unwrap();
    let stale = stale_file.to_string_lossy().into_owned();
    let late = Proxy::start_with(
        &controller.url(),
        "infra/gw",
        free_port() - 80,
        Ipv4Addr::LOCALHOST,
        dir,
        &["--auth-token-file", &stale],
    );
    eventually(Duration::from_secs(10), || async {
        late.process.log_text().contains("token has expired")
    })
    .await;
    assert!(!ready(&late).await);
}
