//! Resource type URLs and their make-before-break order.

use crate::api::v1::resource::Payload;

/// A resource type carried on the discovery stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// Upstream clusters: sent first so routes never point at an unknown cluster.
    Cluster,
    /// Endpoints of clusters.
    Endpoints,
    /// Listening sockets.
    Listener,
    /// Route tables: sent after everything they reference.
    RouteTable,
    /// The rules of one route in one route table: after the tables they join.
    RouteRules,
    /// Route tables of TCP, UDP and TLS-terminating listeners: like route tables, after the
    /// clusters they name (their own type, so they are ACKed, NACKed and resumed on their own).
    L4RouteTable,
}

impl ResourceType {
    /// All types in the order updates are pushed (make-before-break).
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Cluster,
        ResourceType::Endpoints,
        ResourceType::Listener,
        ResourceType::RouteTable,
        ResourceType::RouteRules,
        ResourceType::L4RouteTable,
    ];

    /// The type URL used on the wire.
    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/rauta.v1.Cluster",
            ResourceType::Endpoints => "type.googleapis.com/rauta.v1.ClusterEndpoints",
            ResourceType::Listener => "type.googleapis.com/rauta.v1.Listener",
            ResourceType::RouteTable => "type.googleapis.com/rauta.v1.RouteTable",
            ResourceType::RouteRules => "type.googleapis.com/rauta.v1.RouteRules",
            ResourceType::L4RouteTable => "type.googleapis.com/rauta.v1.L4RouteTable",
        }
    }

    /// Short name for humans (admin filters, logs, metrics labels).
    pub const fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cluster",
            ResourceType::Endpoints => "endpoints",
            ResourceType::Listener => "listener",
            ResourceType::RouteTable => "route_table",
            ResourceType::RouteRules => "route_rules",
            ResourceType::L4RouteTable => "l4_route_table",
        }
    }

    /// Parses a full type URL or a short name.
    pub fn parse(s: &str) -> Option<ResourceType> {
        Self::ALL
            .into_iter()
            .find(|t| t.type_url() == s || t.short_name() == s)
    }

    /// The type of a resource payload.
    pub fn of_payload(payload: &Payload) -> ResourceType {
        match payload {
            Payload::Listener(_) => ResourceType::Listener,
            Payload::RouteTable(_) => ResourceType::RouteTable,
            Payload::RouteRules(_) => ResourceType::RouteRules,
            Payload::Cluster(_) => ResourceType::Cluster,
            Payload::Endpoints(_) => ResourceType::Endpoints,
            Payload::L4RouteTable(_) => ResourceType::L4RouteTable,
        }
    }
}

/// The subscription name meaning "every resource of this type".
pub const WILDCARD: &str = "*";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_full_and_short_names() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::parse(t.type_url()), Some(t));
            assert_eq!(ResourceType::parse(t.short_name()), Some(t));
        }
        assert_eq!(
            ResourceType::parse("type.googleapis.com/rauta.v1.Nope"),
            None
        );
    }

    #[test]
    fn push_order_is_make_before_break() {
        let order: Vec<_> = ResourceType::ALL.iter().map(|t| t.short_name()).collect();
        assert_eq!(
            order,
            [
                "cluster",
                "endpoints",
                "listener",
                "route_table",
                "route_rules",
                "l4_route_table"
            ]
        );
    }
}
