use std::convert::Infallible;

use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rauta_common::api::v1::route_rule::Action;
use rauta_common::api::v1::{
    DirectResponse, HeaderModifier, HeaderValue as ApiHeader, PathMatch, PathMatchKind, Redirect,
    RouteMatch, RouteRule,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::model::filters::Inherited;
use crate::model::filters::session::SessionKeys;
use crate::model::kept::RuleStores;
use crate::observe::metrics::ProxyMetrics;

fn header(name: &str, value: &str) -> ApiHeader {
    ApiHeader {
        name: name.into(),
        value: value.into(),
    }
}

fn rule(path: &str, action: Action, response_headers: Option<HeaderModifier>) -> RuleRt {
    let rule = RouteRule {
        name: "r".into(),
        matches: vec![RouteMatch {
            path: Some(PathMatch {
                kind: PathMatchKind::Exact as i32,
                value: path.into(),
            }),
            ..Default::default()
        }],
        action: Some(action),
        response_headers: response_headers.map(Box::new),
        kernel_answerable: true,
        ..Default::default()
    };
    let metrics = ProxyMetrics::new().unwrap();
    let mut stores = RuleStores::default();
    let keys = SessionKeys::default();
    RuleRt::build(&rule, &metrics, &keys, &mut stores, Inherited::default()).unwrap()
}

/// What hyper, serving user space's answers, writes for `template` to a request with
/// `Connection: close` (the kernel's answers close the connection too).
async fn hyper_bytes(template: &Template, method: &str) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let t = template.clone();
    let service = service_fn(move |_req| {
        let mut resp = http::Response::new(Full::new(t.body.clone()));
        *resp.status_mut() = t.status;
        *resp.headers_mut() = t.headers.clone();
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service);
    let task = tokio::spawn(conn);
    let (mut read, mut write) = tokio::io::split(client);
    write
        .write_all(
            format!("{method} /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    read.read_to_end(&mut out).await.unwrap();
    task.await.unwrap().unwrap();
    out
}

/// The date line's value replaced, so two renderings a second apart compare equal.
fn without_date(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .split("\r\n")
        .map(|l| match l.split_once(": ") {
            Some((name, _)) if name.eq_ignore_ascii_case("date") => "date: <date>",
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn templates() -> Vec<Template> {
    let direct_rule = rule(
        "/health",
        Action::DirectResponse(DirectResponse {
            status: 200,
            body: "ok\n".into(),
            headers: vec![
                header("content-type", "application/json"),
                header("x-a", "1"),
            ],
        }),
        Some(HeaderModifier {
            set: vec![header("x-set", "s")],
            add: vec![header("x-a", "2")],
            remove: vec![],
        }),
    );
    let plain_rule = rule(
        "/robots.txt",
        Action::DirectResponse(DirectResponse {
            status: 404,
            body: String::new(),
            headers: vec![],
        }),
        None,
    );
    let redirect_rule = rule(
        "/old",
        Action::Redirect(Redirect {
            scheme: "https".into(),
            status_code: 301,
            ..Default::default()
        }),
        None,
    );
    [direct_rule, plain_rule, redirect_rule]
        .iter()
        .map(|r| template(r, r.kernel.as_ref().unwrap(), 80, Some("example.com")).unwrap())
        .collect()
}

#[tokio::test]
async fn rendered_answers_match_hyper_but_for_the_date() {
    for t in templates() {
        let (ours, head_len) = render(&t, &http_date(), Instant::now());
        let theirs = hyper_bytes(&t, "GET").await;
        assert_eq!(without_date(&ours), without_date(&theirs));
        assert_eq!(&ours[head_len..], &t.body[..]);
        // HEAD: the same head, Content-Length included, and no body (an empty body's HEAD is
        // left to user space: hyper sends it no Content-Length).
        if t.body.is_empty() {
            continue;
        }
        let theirs = hyper_bytes(&t, "HEAD").await;
        assert_eq!(without_date(&ours[..head_len]), without_date(&theirs));
    }
}

#[test]
fn templates_carry_what_user_space_sends() {
    let [direct, _, redirect] = <[Template; 3]>::try_from(templates()).unwrap();
    let names: Vec<&str> = direct.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["content-type", "x-a", "x-set"]);
    assert_eq!(direct.headers.get_all("x-a").iter().count(), 2);
    assert_eq!(direct.headers["content-type"], "application/json");
    assert_eq!(redirect.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(redirect.headers["location"], "https://example.com/old");
}

#[test]
fn a_redirect_keeping_the_host_has_no_any_host_answer() {
    let keep_host = rule(
        "/old",
        Action::Redirect(Redirect {
            scheme: "https".into(),
            ..Default::default()
        }),
        None,
    );
    assert!(template(&keep_host, keep_host.kernel.as_ref().unwrap(), 80, None).is_none());
    let fixed_host = rule(
        "/old",
        Action::Redirect(Redirect {
            hostname: "new.example".into(),
            ..Default::default()
        }),
        None,
    );
    let t = template(&fixed_host, fixed_host.kernel.as_ref().unwrap(), 8080, None).unwrap();
    assert_eq!(t.headers["location"], "http://new.example:8080/old");
}

#[test]
fn cached_answers_get_their_age_and_keep_their_date() {
    let mut headers = HeaderMap::new();
    headers.insert(
        DATE,
        HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
    );
    let stored = Instant::now() - std::time::Duration::from_secs(7);
    let t = Template {
        status: StatusCode::OK,
        headers,
        body: Bytes::from_static(b"x"),
        age: Some((3, stored)),
    };
    let (bytes, _) = render(&t, "Tue, 02 Jan 2024 00:00:00 GMT", Instant::now());
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.contains("date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"),
        "{text}"
    );
    assert!(!text.contains("Tue"), "{text}");
    assert!(text.contains("age: 10\r\n"), "{text}");
}
