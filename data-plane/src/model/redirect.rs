//! RequestRedirect: the Location a rule answers with, from the request and the filter.

use http::StatusCode;
use rauta_common::api::v1::Redirect;

use super::filters::rewrite::{PathRewrite, RewriteError};

/// Why a redirect is invalid.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("redirect status {0} is not a redirect")]
    Status(u32),
    #[error("redirect scheme {0:?} is not supported")]
    Scheme(String),
    #[error("redirect port {0} out of range")]
    Port(u32),
    #[error(transparent)]
    Path(#[from] RewriteError),
}

/// RequestRedirect at run time.
#[derive(Debug)]
pub struct RedirectRt {
    scheme: Option<Box<str>>,
    host: Option<Box<str>>,
    port: Option<u16>,
    path: Option<PathRewrite>,
    pub status: StatusCode,
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl RedirectRt {
    pub fn build(r: &Redirect) -> Result<RedirectRt, RedirectError> {
        let status = match r.status_code {
            0 => StatusCode::FOUND,
            code @ (301 | 302 | 303 | 307 | 308) => {
                StatusCode::from_u16(code as u16).map_err(|_| RedirectError::Status(code))?
            }
            other => return Err(RedirectError::Status(other)),
        };
        let scheme = match r.scheme.as_str() {
            "" => None,
            s @ ("http" | "https") => Some(s.into()),
            other => return Err(RedirectError::Scheme(other.to_owned())),
        };
        let port = match r.port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| RedirectError::Port(p))?),
        };
        let path = match &r.path {
            Some(p) => PathRewrite::build(p)?,
            None => None,
        };
        let host = (!r.hostname.is_empty()).then(|| r.hostname.as_str().into());
        Ok(RedirectRt {
            scheme,
            host,
            port,
            path,
            status,
        })
    }

    /// The Location for a request (Gateway API HTTPRequestRedirectFilter rules).
    pub fn location(
        &self,
        scheme: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
        listener_port: u16,
        matched_prefix: Option<&str>,
    ) -> String {
        let scheme_out = self.scheme.as_deref().unwrap_or(scheme);
        let host = self.host.as_deref().unwrap_or(host);
        let port = self.port.unwrap_or_else(|| match &self.scheme {
            Some(s) => well_known_port(s).unwrap_or(listener_port),
            None => listener_port,
        });
        let path = match &self.path {
            Some(p) => p.apply(path, matched_prefix),
            None => path.to_owned(),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let authority = if well_known_port(scheme_out) == Some(port) {
            host
        } else {
            format!("{host}:{port}")
        };
        match query {
            Some(q) => format!("{scheme_out}://{authority}{path}?{q}"),
            None => format!("{scheme_out}://{authority}{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_location_derives_scheme_host_and_port() {
        let redirect = |scheme: &str, host: &str, port: u32| {
            RedirectRt::build(&Redirect {
                scheme: scheme.into(),
                hostname: host.into(),
                port,
                path: None,
                status_code: 0,
            })
            .unwrap()
        };
        assert_eq!(
            redirect("", "", 0).location("http", "a.com", "/p", None, 80, None),
            "http://a.com/p"
        );
        assert_eq!(
            redirect("", "", 0).location("http", "a.com", "/p", Some("x=1"), 8080, None),
            "http://a.com:8080/p?x=1"
        );
        assert_eq!(
            redirect("https", "", 0).location("http", "a.com", "/p", None, 8080, None),
            "https://a.com/p"
        );
        assert_eq!(
            redirect("", "b.org", 8083).location("http", "a.com", "/p", None, 80, None),
            "http://b.org:8083/p"
        );
        assert_eq!(
            redirect("https", "", 443).location("http", "a.com", "/", None, 80, None),
            "https://a.com/"
        );
        assert!(
            RedirectRt::build(&Redirect {
                status_code: 200,
                ..Default::default()
            })
            .is_err()
        );
    }
}
