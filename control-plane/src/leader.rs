//! Leader election on a `coordination.k8s.io/v1` Lease, the protocol client-go's
//! leaderelection package speaks, so RAUTA replicas interoperate with `kubectl get lease`.
//!
//! Every replica watches the cluster and serves proxies; only the leader writes status, so
//! two replicas never fight over an object's conditions.
//!
//! Expiry is judged by this replica's own clock: a holder is considered gone when its record
//! has not changed for a lease duration since we first saw it, so clock skew between nodes
//! does not matter (as client-go does it).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (the pod name in a cluster).
    pub identity: String,
    /// How long a holder that stopped renewing keeps the lease.
    pub duration: Duration,
}

impl LeaseSettings {
    /// A leader that could not renew for this long stops acting as one, before the lease can
    /// expire for the others (client-go's renew deadline is 10 s of a 15 s lease).
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn retry(&self) -> Duration {
        self.duration / 5
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

fn now() -> Option<MicroTime> {
    Some(MicroTime(Timestamp::now()))
}

fn conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// The holder and resource version last seen, and when they were first seen.
struct Observed {
    record: (String, Option<String>),
    since: Instant,
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
}

impl Elector {
    /// One round: take or keep the lease if we may. Ok(true) means we hold it now.
    async fn round(&mut self) -> Result<bool, kube::Error> {
        let me = &self.settings.identity;
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(self.settings.duration_seconds()),
                    acquire_time: now(),
                    renew_time: now(),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(err) if conflict(&err) => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (holder.clone(), lease.metadata.resource_version.clone());
        let since = match &self.observed {
            Some(o) if o.record == record => o.since,
            _ => Instant::now(),
        };
        self.observed = Some(Observed { record, since });
        let their_duration = spec
            .lease_duration_seconds
            .map_or(self.settings.duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        if !holder.is_empty() && holder != *me && since.elapsed() < their_duration {
            return Ok(false);
        }
        if holder != *me {
            spec.acquire_time = now();
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            spec.holder_identity = Some(me.clone());
        }
        spec.renew_time = now();
        spec.lease_duration_seconds = Some(self.settings.duration_seconds());
        // The resource version read above makes this a compare-and-swap: of two replicas
        // taking an expired lease at once, one gets 409.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if conflict(&err) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// Competes for the lease forever, reporting whether this replica leads on `leader`.
pub async fn run(client: kube::Client, settings: LeaseSettings, leader: watch::Sender<bool>) {
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
        observed: None,
    };
    let mut last_renewal: Option<Instant> = None;
    let mut failing = false;
    loop {
        // A round that hangs (an overloaded API server, a half-open connection) must not
        // keep us leading past the deadline, while another replica takes the lease.
        let round = tokio::time::timeout(settings.renew_deadline(), elector.round()).await;
        let leads = match round
            .unwrap_or_else(|_| Err(kube::Error::Service("lease round timed out".into())))
        {
            Ok(held) => {
                failing = false;
                last_renewal = held.then(Instant::now);
                held
            }
            Err(err) => {
                if !failing {
                    warn!(%err, lease = %format!("{}/{}", settings.namespace, settings.name), "cannot reach the leader lease");
                    failing = true;
                }
                last_renewal.is_some_and(|at| at.elapsed() < settings.renew_deadline())
            }
        };
        leader.send_if_modified(|current| {
            if *current == leads {
                return false;
            }
            *current = leads;
            match leads {
                true => info!(identity = %settings.identity, "became the leader: writing status"),
                false => info!(identity = %settings.identity, "not the leader: status is written by another replica"),
            }
            true
        });
        tokio::time::sleep(settings.retry()).await;
    }
}

/// Gives the lease up if we hold it, so another replica takes over at once instead of after
/// the lease duration.
pub async fn release(client: kube::Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&settings.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.renew_time = now();
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => info!("leader lease released"),
        Err(err) => warn!(%err, "cannot release the leader lease"),
    }
}
