//! HTTPRoute retry: how often, on which answers, and how long to wait in between. The
//! cluster's retry budget (`model::retry_budget`) bounds retries across requests.

/// A rule's retry policy at run time.
#[derive(Debug)]
pub struct RetryRt {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub backoff: std::time::Duration,
}

/// Why a retry policy is invalid.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("invalid retry code {0}")]
    Code(u32),
    #[error("retry backoff: {0}")]
    Backoff(String),
}

impl RetryRt {
    pub fn build(r: &rauta_common::api::v1::RetryPolicy) -> Result<RetryRt, RetryError> {
        let codes = r
            .codes
            .iter()
            .map(|c| u16::try_from(*c).map_err(|_| RetryError::Code(*c)))
            .collect::<Result<_, _>>()?;
        let backoff = match &r.backoff {
            Some(d) => {
                std::time::Duration::try_from(*d).map_err(|e| RetryError::Backoff(e.to_string()))?
            }
            None => std::time::Duration::from_millis(25),
        };
        Ok(RetryRt {
            attempts: r.attempts.min(10),
            codes,
            backoff,
        })
    }
}
