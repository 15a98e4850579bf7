//! HTTPS listeners end to end with a real TLS client: SNI chooses the listener's certificate,
//! an unmatched name gets the default one, ALPN negotiates HTTP/2, and a rotated Secret is
//! served to new connections without restarting anything.

use std::time::Duration;

use rauta_tests::harness::{Controller, Echo, Proxy, Workspace, eventually, free_port, https_get};
use rauta_tests::manifests::{
    documents, gateway_class, http_route, https_gateway, service, tls_secret,
};

fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listeners_terminate_tls_by_sni_and_rotate_certificates() {
    let ws = Workspace::new();
    let echo = Echo::start("echo-1-a", "apps", ws.path());
    let (default_cert, default_key, default_der) = self_signed("default.example");
    let (secure_cert, secure_key, secure_der) = self_signed("secure.example.com");
    let infra = |secure: (&str, &str)| {
        documents(&[
            gateway_class("rauta"),
            https_gateway(
                "infra",
                "gw",
                "rauta",
                &[
                    ("https", 443, None, "default-cert"),
                    (
                        "https-secure",
                        443,
                        Some("secure.example.com"),
                        "secure-cert",
                    ),
                ],
            ),
            tls_secret("infra", "default-cert", &default_cert, &default_key),
            tls_secret("infra", "secure-cert", secure.0, secure.1),
            service("apps", "echo", &[echo.http]),
            http_route(
                "apps",
                "web",
                ("infra", "gw"),
                &[],
                "  - backendRefs:\n    - {name: echo, port: 8080}\n",
            ),
        ])
    };
    ws.write("all.yaml", &infra((&secure_cert, &secure_key)));
    let controller = Controller::start(&ws.config, ws.path());
    let proxy = Proxy::start(&controller.url(), "infra/gw", free_port() - 443, ws.path());
    proxy.wait_ready().await;
    // The admin dump shows the listener's certificates but never their keys.
    let dump = proxy.config_dump().await.to_string();
    assert!(dump.contains("BEGIN CERTIFICATE"), "{dump}");
    assert!(!dump.contains("PRIVATE KEY"), "a key in the dump");
    assert!(dump.contains("[redacted]"));
    let addr = proxy.listener(443);
    let trusted = [default_cert.as_str(), secure_cert.as_str()];

    // SNI secure.example.com: that listener's certificate (the client verifies the name too).
    let r = https_get(addr, "secure.example.com", &trusted, false, "/hello")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.peer_certificate, secure_der);
    let echoed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(echoed["headers"]["X-Forwarded-Proto"][0], "https");
    assert_eq!(echoed["host"], "secure.example.com");

    // Any other name falls back to the listener without hostname and its certificate.
    let r = https_get(addr, "default.example", &trusted, false, "/")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.peer_certificate.clone()),
        (200, default_der.clone())
    );

    // ALPN: h2 is offered and used.
    let r = https_get(addr, "secure.example.com", &trusted, true, "/h2")
        .await
        .unwrap();
    assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));

    // A client that does not trust the certificate fails the handshake.
    assert!(
        https_get(
            addr,
            "secure.example.com",
            &[default_cert.as_str()],
            false,
            "/"
        )
        .await
        .is_err()
    );

    // Rotate the Secret: new connections get the new certificate, no restart.
    let (new_cert, new_key, new_der) = self_signed("secure.example.com");
    ws.write("all.yaml", &infra((&new_cert, &new_key)));
    let trusted_new = [default_cert.as_str(), new_cert.as_str()];
    eventually(Duration::from_secs(10), || async {
        https_get(addr, "secure.example.com", &trusted_new, false, "/")
            .await
            .is_ok_and(|r| r.peer_certificate == new_der)
    })
    .await;

    // The admin service never shows the private key.
    let snapshot = controller
        .admin()
        .await
        .get_snapshot(rauta_common::api::v1::GetSnapshotRequest {
            gateway: "infra/gw".into(),
            type_url: "listener".into(),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let text = format!("{snapshot:?}");
    assert!(
        text.contains("[redacted]") && !text.contains("PRIVATE KEY"),
        "key material leaked: {text}"
    );
}
