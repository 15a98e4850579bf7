//! What an external authorization call comes to, whichever protocol made it (`ext_auth` for
//! forward auth, `ext_authz_grpc` for Envoy's gRPC API).

use http::{HeaderMap, HeaderName, HeaderValue, Response};

use super::local_reply::ProxyBody;

/// Largest answer body passed back to the client on a refusal.
pub(super) const MAX_DENIAL_BODY: usize = 64 * 1024;

/// Headers of a refusal not passed back: they describe the service's connection (or the body
/// as it came), not the answer.
pub(super) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "content-length",
];

/// How a call ended.
pub(super) enum Outcome {
    /// Let through, with these changes to the request.
    Allowed(Edits),
    /// The answer for the client (boxed: most calls allow).
    Denied(Box<Response<ProxyBody>>),
    /// No answer (timeout, no endpoint, connection failure): fail open or closed.
    Failed,
}

/// Changes an authorization service makes to a request it lets through.
#[derive(Default)]
pub(super) struct Edits {
    pub set: Vec<(HeaderName, HeaderValue, SetMode)>,
    pub remove: Vec<HeaderName>,
}

/// How a header a service sets meets the request's own values of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum SetMode {
    Append,
    Overwrite,
    AddIfAbsent,
    OverwriteIfExists,
}

impl Edits {
    pub(super) fn apply(self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        let mut overwritten: Vec<HeaderName> = Vec::new();
        for (name, value, mode) in self.set {
            let present = headers.contains_key(&name);
            let first = !overwritten.contains(&name);
            match mode {
                SetMode::Append => headers.append(name, value),
                SetMode::AddIfAbsent if present => continue,
                SetMode::OverwriteIfExists if !present => continue,
                // Several values of one name overwrite the request's, then add up.
                _ if first => {
                    overwritten.push(name.clone());
                    headers.insert(name, value);
                    continue;
                }
                _ => headers.append(name, value),
            };
        }
    }
}
