//! A rule's global rate limits (its own RateLimitPolicy's, else its listener's): counted
//! across the fleet in Redis (`serve::global_limit` asks it), batches spent locally.

use std::sync::Arc;

use rauta_common::api::v1::GlobalRateLimits;

use crate::model::global_limit::{GlobalConfig, GlobalLimiter};
use crate::model::kept::Kept;
use crate::model::rate_limit::{RateLimitError, configured};

#[derive(Debug)]
pub struct GlobalRateLimitRt {
    pub limiters: Box<[Arc<GlobalLimiter>]>,
}

impl GlobalRateLimitRt {
    pub fn build(
        limits: &GlobalRateLimits,
        route: &str,
        stores: &mut Kept<GlobalLimiter>,
    ) -> Result<GlobalRateLimitRt, RateLimitError> {
        let limiters = configured(&limits.limits, route)?
            .into_iter()
            .map(|(limit, name)| {
                let config = GlobalConfig {
                    limit,
                    fail_closed: limits.fail_closed,
                };
                stores.store_for(&name, config)
            })
            .collect();
        Ok(GlobalRateLimitRt { limiters })
    }
}
