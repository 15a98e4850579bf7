//! Translation that reuses the previous one's work. Compiling routes is most of a
//! translation's cost, and one edit changes one route: a route whose object and whose
//! compilation inputs are unchanged since the previous translation keeps its compiled form.
//!
//! Compilation reads the route (through its view) and the objects `compile_reads` selects,
//! nothing else: here it is given a set holding only those kinds, and reuse compares exactly
//! that set; except Services, which compilation only looks up by key (`CompiledRoute::resolve`
//! records which, with the object it found): a route is compiled again when one of the
//! Services it looked up changed, not when any did (one Service per app: each new app would
//! compile every route again). Attached policies likewise: a route records the targets it
//! looked up in the `PolicyIndex` (its own, its rules') with what applied there, and the
//! RateLimitPolicies its filters named, and is compiled again when one of those changes. The Services stay in the compilation inputs all the same, so
//! that compilation can read nothing else. `translate`, the reference, hands compilation every
//! object instead, so if compilation came to read a kind left out here, the two would differ,
//! and the property test (`incremental_tests.rs`, random sequences of changes to every kind)
//! would say so. Of what a translation derives from compiled routes, each route's
//! attachment (with its status), its `RouteRules` and each cluster's endpoints are reused
//! where they were built from the same things (`attachment::AttachMemo`,
//! `route_rules::RulesMemo`, `backends::EndpointsMemo`); listeners, the route tables' virtual
//! hosts and Gateway status are recomputed each time.

use std::borrow::Cow;
use std::collections::{BTreeMap, btree_map};
use std::iter::Peekable;
use std::sync::Arc;

use super::attachment::AttachMemo;
use super::backends::{EndpointIndex, EndpointsMemo};
use super::policies::{PolicyIndex, same_reads};
use super::route_rules::RulesMemo;
use super::route_view::{RouteEntry, RouteId, RouteKind, RouteView};
use super::routes::{self, CompiledRoute};
use super::{Translation, translate_with};
use crate::objects::{Kind, ObjectRef, ObjectSet};

/// Whether route compilation may read objects of `kind`: a change to any object of these
/// kinds compiles every route again. Routes reach compilation through their view;
/// EndpointSlices only fill in endpoints after it (`backends::EndpointIndex`); Gateways, their
/// classes, ListenerSets, Namespaces and Secrets (listener certificates) are read for
/// listeners and attachment, not for routes. Secrets and EndpointSlices change most often.
fn compile_reads(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::HttpRoute
            | Kind::TlsRoute
            | Kind::GrpcRoute
            | Kind::TcpRoute
            | Kind::UdpRoute
            | Kind::EndpointSlice
            | Kind::Gateway
            | Kind::GatewayClass
            | Kind::ListenerSet
            | Kind::Namespace
            | Kind::Secret
            // Read through the PolicyIndex (with the Secrets it names), per route.
            | Kind::SecurityPolicy
            | Kind::TrafficPolicy
    )
}

/// What one translation leaves for the next.
struct Memo {
    /// The objects compilation read.
    inputs: ObjectSet,
    /// The compiled routes, each with the route object it was compiled from.
    compiled: BTreeMap<RouteId, Arc<CompiledRoute>>,
    /// The `RouteRules` built from them.
    rules: RulesMemo,
    /// The endpoints filled in.
    endpoints: EndpointsMemo,
    /// How each route attached.
    attachments: AttachMemo,
}

/// Compiles the routes of one translation, reusing the previous translation's compiled
/// routes where nothing they were compiled from has changed.
pub struct Compiler<'a> {
    inputs: Cow<'a, ObjectSet>,
    /// The policies attached to routes and Gateways.
    pub policies: PolicyIndex,
    /// The previous translation's work, if its compilation inputs equal these.
    reusable: Option<&'a Memo>,
    /// Where `previous` is in the previous translation's compiled routes.
    cursor: Option<Peekable<btree_map::Iter<'a, RouteId, Arc<CompiledRoute>>>>,
    reused: usize,
    /// The `RouteRules` built from compiled routes: those of the previous translation to
    /// reuse, and this one's.
    pub rules: RulesMemo,
    /// The same for the endpoints filled in.
    pub endpoints: EndpointsMemo,
    /// How each route attached in the previous translation (reused where nothing it read
    /// changed), and in this one.
    pub attachments: AttachMemo,
}

impl<'a> Compiler<'a> {
    fn new(objects: &ObjectSet, previous: Option<&'a Memo>) -> Self {
        let inputs = objects.only(compile_reads);
        // Services and RateLimitPolicies are compared per route, by what it read.
        let reusable = previous.filter(|memo| {
            memo.inputs.same_kinds(&inputs, |kind| {
                kind != Kind::Service && kind != Kind::RateLimitPolicy
            })
        });
        Compiler {
            policies: PolicyIndex::new(objects),
            inputs: Cow::Owned(inputs),
            reusable,
            cursor: None,
            reused: 0,
            rules: RulesMemo::default(),
            endpoints: EndpointsMemo::default(),
            attachments: AttachMemo::default(),
        }
    }

    /// A compiler that reuses nothing and lets compilation read every object: the reference.
    pub fn fresh(objects: &'a ObjectSet) -> Compiler<'a> {
        Compiler {
            policies: PolicyIndex::new(objects),
            inputs: Cow::Borrowed(objects),
            reusable: None,
            cursor: None,
            reused: 0,
            rules: RulesMemo::default(),
            endpoints: EndpointsMemo::default(),
            attachments: AttachMemo::default(),
        }
    }

    pub fn compile(&mut self, entry: &RouteEntry<'_>, route: &RouteView<'_>) -> Arc<CompiledRoute> {
        self.reuse(entry)
            .unwrap_or_else(|| Arc::new(routes::compile(&self.inputs, &self.policies, route)))
    }

    /// The previous translation's compiled form of the route, if nothing it was compiled
    /// from has changed.
    pub fn reuse(&mut self, entry: &RouteEntry<'_>) -> Option<Arc<CompiledRoute>> {
        let compiled = self.previous(&(entry.kind(), entry.key))?;
        let services_same = compiled.services_read.iter().all(|(key, before)| {
            match (before, self.inputs.services.get(key)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
        });
        let rate_limits_same = compiled.rate_limits_read.iter().all(|(key, before)| {
            match (before, self.inputs.rate_limit_policies.get(key)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                (None, None) => true,
                _ => false,
            }
        });
        if !(entry.is(&compiled.source)
            && services_same
            && rate_limits_same
            && same_reads(&self.policies, &compiled.policies_read))
        {
            return None;
        }
        self.reused += 1;
        Some(Arc::clone(compiled))
    }

    /// The previous translation's compiled route of `id`. Routes are compiled in id order,
    /// so this steps along the previous ones instead of searching them (tens of thousands
    /// of string comparisons a translation); a lookup out of order searches.
    fn previous(
        &mut self,
        (kind, key): &(RouteKind, &ObjectRef),
    ) -> Option<&'a Arc<CompiledRoute>> {
        let memo = self.reusable?;
        let cursor = self
            .cursor
            .get_or_insert_with(|| memo.compiled.iter().peekable());
        let before = |(k, _): &(&RouteId, _)| (k.0, &k.1) < (*kind, *key);
        while cursor.next_if(before).is_some() {}
        match cursor.peek() {
            Some(((k, name), compiled)) if k == kind && name == *key => Some(compiled),
            _ => memo.compiled.get(&(*kind, (*key).clone())),
        }
    }
}

/// Translates successive object sets, each reusing what it can of the one before.
pub struct Translator {
    controller_name: String,
    memo: Option<Memo>,
    /// Routes whose compiled form the last translation reused.
    pub reused_last: usize,
    /// Routes whose attachment the last translation reused.
    pub attachments_reused_last: usize,
}

impl Translator {
    pub fn new(controller_name: impl Into<String>) -> Self {
        Translator {
            controller_name: controller_name.into(),
            memo: None,
            reused_last: 0,
            attachments_reused_last: 0,
        }
    }

    /// What `translate(objects, controller_name)` gives, computed from the previous call's
    /// results where they still hold.
    pub fn translate(&mut self, objects: &ObjectSet) -> Translation {
        // The rules and endpoints memos are handed on whatever the other inputs: they check
        // each entry themselves.
        let (rules, endpoints, attachments) = self
            .memo
            .as_mut()
            .map(|m| {
                (
                    std::mem::take(&mut m.rules),
                    std::mem::take(&mut m.endpoints),
                    std::mem::take(&mut m.attachments),
                )
            })
            .unwrap_or_default();
        let mut compiler = Compiler::new(objects, self.memo.as_ref());
        compiler.rules = rules;
        compiler.endpoints = endpoints;
        compiler.attachments = attachments;
        let (translation, compiled) = translate_with(objects, &self.controller_name, &mut compiler);
        self.reused_last = compiler.reused;
        self.attachments_reused_last = compiler.attachments.reused;
        let (mut rules, mut endpoints, mut attachments) =
            (compiler.rules, compiler.endpoints, compiler.attachments);
        rules.advance();
        endpoints.advance();
        attachments.advance();
        let inputs = compiler.inputs.into_owned();
        self.memo = Some(Memo {
            inputs,
            compiled,
            rules,
            endpoints,
            attachments,
        });
        translation
    }

    /// Fills in the endpoints of every cluster of `gateways` (the previous translation's
    /// resources) from `objects`, which differ from that translation's at most in their
    /// EndpointSlices: the endpoint fast path, reusing the endpoints of untouched clusters.
    pub fn refresh_endpoints(
        &mut self,
        objects: &ObjectSet,
        gateways: &mut BTreeMap<crate::objects::ObjectRef, super::ResourceSet>,
    ) {
        let index = EndpointIndex::new(objects);
        let mut memo = self
            .memo
            .as_mut()
            .map(|m| std::mem::take(&mut m.endpoints))
            .unwrap_or_default();
        for set in gateways.values_mut() {
            index.fill(set, &mut memo);
        }
        memo.advance();
        if let Some(m) = &mut self.memo {
            m.endpoints = memo;
        }
    }
}
