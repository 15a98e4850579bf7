//! A rule's global rate limits (its own RateLimitPolicy's, else its listener's): counted
//! across the fleet in Redis (`serve::global_limit` asks it), batches spent locally.

use std::sync::Arc;

use rauta_common::api::v1::GlobalRateLimits;

use crate::model::global_limit::{GlobalConfig, GlobalLimiter};
use crate::model::kept::Kept;
use crate::model::rate_limit::{KeyPart, LimitConfig, RateLimitError};

/// Most limits one rule may count.
const MAX_LIMITS: usize = 8;

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
        if limits.limits.is_empty() || limits.limits.len() > MAX_LIMITS {
            return Err(RateLimitError::Count);
        }
        let limiters = limits
            .limits
            .iter()
            .map(|l| {
                let limit = LimitConfig::try_from(l)?;
                let name = match limit.key.contains(&KeyPart::Route) {
                    true => format!("{}@{route}", l.name),
                    false => l.name.clone(),
                };
                let config = GlobalConfig {
                    limit,
                    fail_closed: limits.fail_closed,
                };
                Ok(stores.store_for(&name, config))
            })
            .collect::<Result<_, RateLimitError>>()?;
        Ok(GlobalRateLimitRt { limiters })
    }
}
