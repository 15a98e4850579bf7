//! A SecurityPolicy's `authorization` in its snapshot form, checked here so that a typo is a
//! status condition, not a snapshot the proxies refuse.

use rauta_common::api::v1::{Authorization, AuthorizationRule, RequiredClaim};

use crate::crds::security_policy as crd;
use crate::objects::ObjectRef;

pub fn authorization(key: &ObjectRef, a: &crd::Authorization) -> Result<Authorization, String> {
    let action = |what: &str, text: &str| match text {
        "Allow" => Ok(true),
        "Deny" => Ok(false),
        other => Err(format!("{what}: {other:?} is neither Allow nor Deny")),
    };
    let default_allow = action(
        "authorization.defaultAction",
        a.default_action.as_deref().unwrap_or("Deny"),
    )?;
    let mut rules: Vec<AuthorizationRule> = Vec::new();
    for (index, r) in a.rules.iter().enumerate() {
        let name = r.name.clone().unwrap_or_else(|| format!("rule-{index}"));
        if rules.iter().any(|other| other.name == name) {
            return Err(format!("authorization.rules: name {name:?} used twice"));
        }
        let what = format!("authorization rule {name:?}");
        let principal = r.principal.clone().unwrap_or_default();
        let operation = r.operation.clone().unwrap_or_default();
        for cidr in &principal.client_cidrs {
            let parsed = cidr
                .parse::<ipnet::IpNet>()
                .map(drop)
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(drop));
            if parsed.is_err() {
                return Err(format!("{what}: {cidr:?} is not a CIDR"));
            }
        }
        for m in &operation.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!(
                    "{what}: method {m:?} is not an upper-case method name"
                ));
            }
        }
        for p in &operation.paths {
            if !p.starts_with('/') {
                return Err(format!("{what}: path {p:?} does not start with /"));
            }
        }
        let jwt = principal.jwt.unwrap_or_default();
        rules.push(AuthorizationRule {
            name,
            allow: action(&what, &r.action)?,
            client_cidrs: principal.client_cidrs,
            claims: jwt
                .claims
                .into_iter()
                .map(|c| RequiredClaim {
                    name: c.name,
                    values: c.values,
                })
                .collect(),
            scopes: jwt.scopes,
            methods: operation.methods,
            path_prefixes: operation.paths,
        });
    }
    let hops = a
        .client_ip_detection
        .as_ref()
        .and_then(|d| d.x_forwarded_for.as_ref())
        .map_or(0, |x| x.num_trusted_hops);
    if hops > 16 {
        return Err("clientIPDetection.xForwardedFor.numTrustedHops: at most 16".into());
    }
    Ok(Authorization {
        rules,
        default_allow,
        xff_trusted_hops: hops,
        name: key.to_string(),
    })
}
