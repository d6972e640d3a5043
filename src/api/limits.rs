//! Limits per caller (`[limits]`): writes per principal and unauthenticated
//! reads per client address are rate limited (429 `rate_limited` with
//! `Retry-After`), and uploads are capped in number and in the bytes they
//! may hold in memory at once (503 `uploads_busy` with `Retry-After`).
//! Rates are GCRA cells (`governor`), one per key; every refusal is counted
//! in `atelier_limited_total` by `limit`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, AppState};
use crate::config::LimitsConfig;

/// The limiters of one API process.
#[allow(missing_debug_implementations)]
pub struct Limits {
    writes: Option<DefaultKeyedRateLimiter<String>>,
    reads: Option<DefaultKeyedRateLimiter<IpAddr>>,
    uploads: Arc<Semaphore>,
    /// Upload memory, in KiB permits.
    memory: Arc<Semaphore>,
    memory_kib: u32,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("writes", &self.writes.is_some())
            .field("reads", &self.reads.is_some())
            .finish_non_exhaustive()
    }
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(rate)))
}

/// A refusal, counted.
fn limited(
    limit: &'static str,
    status: StatusCode,
    code: &'static str,
    reason: String,
    retry: u64,
) -> ApiError {
    crate::telemetry::emit::limited(limit);
    ApiError::new(status, code, reason).retry_after(retry)
}

/// Seconds until a refused cell conforms again, rounded up.
fn wait_secs(not_until: &governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    let d = not_until.wait_time_from(DefaultClock::default().now());
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// What one upload holds while it is received and stored.
#[derive(Debug)]
pub struct UploadPermit {
    _slot: OwnedSemaphorePermit,
    _memory: OwnedSemaphorePermit,
}

impl Limits {
    /// From configuration.
    pub fn new(cfg: &LimitsConfig) -> Self {
        let memory_kib = cfg.upload_memory_mib.max(1).saturating_mul(1024);
        Self {
            writes: quota(cfg.writes_per_sec, cfg.writes_burst).map(RateLimiter::keyed),
            reads: quota(cfg.reads_per_sec, cfg.reads_burst).map(RateLimiter::keyed),
            uploads: Arc::new(Semaphore::new(cfg.uploads_in_flight.max(1) as usize)),
            memory: Arc::new(Semaphore::new(memory_kib as usize)),
            memory_kib,
        }
    }

    /// Forgets the keys whose cells are back to full (idle callers), so the
    /// limiters hold the recently active callers, not every caller ever.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.writes {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.reads {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// One write by `principal`, or 429.
    pub fn write(&self, principal: &str) -> Result<(), ApiError> {
        let Some(l) = &self.writes else { return Ok(()) };
        l.check_key(&principal.to_owned()).map_err(|n| {
            limited(
                "writes",
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{principal} is writing faster than limits.writes_per_sec allows"),
                wait_secs(&n),
            )
        })
    }

    /// One unauthenticated read from `ip`, or 429.
    pub fn read(&self, ip: IpAddr) -> Result<(), ApiError> {
        let Some(l) = &self.reads else { return Ok(()) };
        l.check_key(&ip).map_err(|n| {
            limited(
                "reads",
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{ip} is reading faster than limits.reads_per_sec allows"),
                wait_secs(&n),
            )
        })
    }

    /// Room for one upload of about `bytes`, or 503: a slot, and its bytes
    /// of upload memory (a larger request than the whole budget takes all).
    pub fn upload(&self, bytes: u64) -> Result<UploadPermit, ApiError> {
        let busy = |what: &str| {
            limited(
                "uploads",
                StatusCode::SERVICE_UNAVAILABLE,
                "uploads_busy",
                format!("{what}; retry shortly"),
                1,
            )
        };
        let slot = self.uploads.clone().try_acquire_owned().map_err(|_| {
            busy("as many uploads as limits.uploads_in_flight allows are in progress")
        })?;
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.memory_kib);
        let memory = self
            .memory
            .clone()
            .try_acquire_many_owned(kib)
            .map_err(|_| busy("uploads in progress hold limits.upload_memory_mib of memory"))?;
        Ok(UploadPermit {
            _slot: slot,
            _memory: memory,
        })
    }
}

/// Rate limits unauthenticated reads by client address (requests with a
/// token are limited per principal where they write).
pub async fn reads(st: axum::extract::State<AppState>, req: Request, next: Next) -> Response {
    let unauthenticated = !req.headers().contains_key(header::AUTHORIZATION);
    if unauthenticated
        && matches!(*req.method(), Method::GET | Method::HEAD)
        && let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>()
        && let Err(e) = st.limits.read(addr.ip())
    {
        return e.into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_callers_are_forgotten() {
        let l = Limits::new(&LimitsConfig {
            writes_per_sec: 20,
            writes_burst: 1,
            ..LimitsConfig::default()
        });
        for i in 0..100 {
            l.write(&format!("p{i}")).unwrap();
        }
        assert!(l.write("p0").is_err(), "p0 spent its burst");
        let held = || l.writes.as_ref().map_or(0, |w| w.len());
        assert_eq!(held(), 100);
        std::thread::sleep(std::time::Duration::from_millis(200));
        l.forget_idle();
        assert_eq!(held(), 0, "every caller is back at a full allowance");
    }
}
