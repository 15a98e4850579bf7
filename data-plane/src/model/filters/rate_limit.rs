//! A rule's local rate limits (its own RateLimitPolicy's, else its listener's): every limit is
//! counted, and a request over any is refused.

use std::net::IpAddr;
use std::sync::Arc;

use rauta_common::api::v1::LocalRateLimits;

use crate::model::kept::Kept;
use crate::model::rate_limit::{Limited, Limiter, RateLimitError, configured};
use crate::model::request::RequestHeaders;

#[derive(Debug)]
pub struct RateLimitRt {
    pub limiters: Box<[Arc<Limiter>]>,
}

impl RateLimitRt {
    /// The limiters of `limits` for a rule of `route` (limits counted per route get a
    /// limiter of their own for each route).
    pub fn build(
        limits: &LocalRateLimits,
        route: &str,
        stores: &mut Kept<Limiter>,
    ) -> Result<RateLimitRt, RateLimitError> {
        let limiters = configured(&limits.limits, route)?
            .into_iter()
            .map(|(config, name)| stores.store_for(&name, config))
            .collect();
        Ok(RateLimitRt { limiters })
    }

    /// Counts the request against every limit; the first it is over, if any.
    #[inline]
    pub fn check(&self, peer: IpAddr, headers: RequestHeaders<'_>) -> Result<(), Limited<'_>> {
        for limiter in self.limiters.iter() {
            if let Err(retry_after) = limiter.check(peer, headers) {
                return Err(Limited {
                    limiter,
                    retry_after,
                });
            }
        }
        Ok(())
    }
}
