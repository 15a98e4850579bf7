//! Where a Gateway can be reached: the addresses its spec asks for, and the addresses of the
//! Service in front of its proxies.

use gateway_api::gateways::Gateway;

use crate::objects::{ObjectRef, ObjectSet};

/// The label GEP-1762 puts on the resources that serve a Gateway (its Service among them).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Why a Gateway's spec.addresses cannot be honoured (Accepted=False, UnsupportedAddress).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedAddress {
    #[error("address type {0:?} is not supported")]
    Type(String),
    #[error("address {0:?} is not an IP address")]
    NotIp(String),
}

/// spec.addresses entries that name an address, as (type, value). RAUTA's proxies report
/// IP addresses, so only IPAddress can be honoured; an entry without a value asks for any
/// address and constrains nothing.
pub fn requested(gw: &Gateway) -> Result<Vec<(String, String)>, UnsupportedAddress> {
    let mut out = Vec::new();
    for a in gw.spec.addresses.iter().flatten() {
        let ty = a.r#type.as_deref().unwrap_or("IPAddress");
        if ty != "IPAddress" {
            return Err(UnsupportedAddress::Type(ty.to_owned()));
        }
        let Some(value) = a.value.as_deref().filter(|v| !v.is_empty()) else {
            continue;
        };
        let ip: std::net::IpAddr = value
            .parse()
            .map_err(|_| UnsupportedAddress::NotIp(value.to_owned()))?;
        out.push((ty.to_owned(), ip.to_string()));
    }
    Ok(out)
}

/// The addresses of the Services in the Gateway's namespace labelled with its name: a
/// LoadBalancer's ingress IPs and hostnames once the cloud has assigned them, a ClusterIP
/// Service's cluster IPs. Empty when there is no such Service or no address yet; then the
/// proxies' own addresses stand in.
pub fn of_services(objects: &ObjectSet, gateway: &ObjectRef) -> Vec<String> {
    let mut out = Vec::new();
    for (key, service) in &objects.services {
        let labelled = service
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(GATEWAY_NAME_LABEL))
            .is_some_and(|name| **name == *gateway.name);
        if key.namespace != gateway.namespace || !labelled {
            continue;
        }
        let spec = service.spec.clone().unwrap_or_default();
        match spec.type_.as_deref() {
            Some("LoadBalancer") => {
                let ingress = service
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref());
                for i in ingress.into_iter().flatten() {
                    out.extend(i.ip.clone().or_else(|| i.hostname.clone()));
                }
            }
            Some("ExternalName" | "NodePort") => {}
            _ => out.extend(
                spec.cluster_ips
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|ip| ip != "None"),
            ),
        }
    }
    out.sort();
    out.dedup();
    out
}
