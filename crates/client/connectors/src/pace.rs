//! Pacing: the caps a sync pair puts on itself so that it never overloads a source (or a destination).
//!
//! One [`Pace`] is shared by everything a run does: requests wait for a slot under the request-rate cap, and
//! bytes copied wait under the bandwidth cap. When a remote pushes back (HTTP 429 or 503, a timeout) the pace
//! halves its request rate and waits out the remote's `Retry-After`; requests already waiting for a slot wait
//! again under the new rate. While requests keep succeeding the rate rises by 5% a second, up to the cap.
//! Push-backs to requests booked before the last slow-down do not halve the rate again (they answer the same
//! burst). Without a cap the first push-back sets the rate to half of what was sent in the last second, and
//! the pace returns to "no cap" once it has climbed far enough.
//!
//! For HTTP services (S3, R2, WebDAV) every HTTP request is paced, in the transport ([`PacedTransport`]); FTP
//! and SFTP have no requests of that kind to see, so there each file copied or deleted counts as one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opendal::{Buffer, HttpBody, HttpTransport};
use tokio::time::Instant;

/// Lowest rate the pace slows down to, in requests per second (and the lowest cap a run may set).
pub const MIN_RATE: f64 = 0.2;
/// Uncapped and back above this many requests per second: uncapped again (and the highest cap a run may set).
pub const UNCAPPED_AGAIN: f64 = 10_000.0;
/// Longest `Retry-After` honoured.
const MAX_PAUSE: Duration = Duration::from_secs(300);
/// Pause after a push-back that gave no `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// How far back requests are counted to measure the rate sent (for the first slow-down without a cap).
const WINDOW: Duration = Duration::from_secs(1);
/// How often the transport sends a request again that a remote pushed back, waiting each time.
const PUSHBACK_RETRIES: u32 = 4;
/// Longest one HTTP request may take, from sending to the response's headers (the wait for a slot is not
/// counted); past it the request fails as temporary and the pace slows down.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// A request with a body gets longer, as if sent at this many bytes per second at the slowest (a piece of an
/// upload session, Dropbox's one-request uploads).
const SLOWEST_UPLOAD: u64 = 64 << 10;

/// The caps of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Caps {
    /// Requests per second at most.
    pub requests_per_second: Option<f64>,
    /// Bytes per second at most.
    pub bytes_per_second: Option<u64>,
}

#[derive(Debug)]
struct State {
    /// Requests per second now allowed (`None`: no cap).
    rate: Option<f64>,
    /// When the next request may go.
    next_request: Instant,
    /// When the next byte may go.
    next_byte: Instant,
    /// Nothing is sent before this (a remote's `Retry-After`).
    paused_until: Instant,
    /// Start times of recent requests, to measure the rate sent.
    recent: std::collections::VecDeque<Instant>,
    /// Bumped at each halving: a request booked under an older epoch answers an older burst.
    epoch: u64,
    /// When the rate was last raised.
    last_increase: Instant,
    requests: u64,
    pushbacks: u64,
    slowdowns: u64,
}

/// A run's shared pace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pace {
    caps: Caps,
    state: Arc<Mutex<State>>,
}

/// What a pace saw, for the run's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PaceReport {
    /// Requests paced.
    pub requests: u64,
    /// Requests a remote pushed back (429, 502, 503, 504, timeouts).
    pub pushbacks: u64,
    /// Times the pace halved its rate (once per burst of push-backs).
    pub slowdowns: u64,
}

impl Pace {
    /// A pace with these caps.
    pub fn new(caps: Caps) -> Self {
        let now = Instant::now();
        let caps = Caps {
            requests_per_second: caps.requests_per_second.filter(|r| r.is_finite() && *r > 0.0),
            bytes_per_second: caps.bytes_per_second.filter(|b| *b > 0),
        };
        let state = State {
            rate: caps.requests_per_second,
            next_request: now,
            next_byte: now,
            paused_until: now,
            recent: std::collections::VecDeque::new(),
            epoch: 0,
            last_increase: now,
            requests: 0,
            pushbacks: 0,
            slowdowns: 0,
        };
        Self { caps, state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a request slot, and returns the epoch it was booked in (for [`Pace::pushed_back`]). A push-back
    /// while it waits sends it to the back of the new, slower queue.
    pub async fn request(&self) -> u64 {
        loop {
            let (at, epoch) = {
                let mut s = self.lock();
                let now = Instant::now();
                let at = s.next_request.max(s.paused_until).max(now);
                if let Some(rate) = s.rate {
                    s.next_request = at + Duration::from_secs_f64(1.0 / rate);
                }
                (at, s.epoch)
            };
            tokio::time::sleep_until(at).await;
            let mut s = self.lock();
            if s.epoch != epoch || s.paused_until > Instant::now() {
                continue; // pushed back while waiting: book again
            }
            let now = Instant::now();
            s.requests += 1;
            while s.recent.front().is_some_and(|t| now.duration_since(*t) > WINDOW) {
                s.recent.pop_front();
            }
            s.recent.push_back(now);
            return epoch;
        }
    }

    /// Waits until `n` more bytes may be sent under the bandwidth cap (they are paid for before they go, so
    /// `B` bytes never take less than `B / cap` seconds).
    pub async fn bytes(&self, n: u64) {
        let Some(cap) = self.caps.bytes_per_second else { return };
        let until = {
            let mut s = self.lock();
            #[allow(clippy::cast_precision_loss)]
            let secs = n as f64 / cap as f64;
            s.next_byte = s.next_byte.max(Instant::now()) + Duration::from_secs_f64(secs);
            s.next_byte
        };
        tokio::time::sleep_until(until).await;
    }

    /// The size of the pieces data should be paced in under a bandwidth cap (an eighth of a second's worth,
    /// from 16 KiB to 1 MiB), so that it flows evenly rather than in bursts.
    pub fn piece(&self) -> Option<usize> {
        let cap = self.caps.bytes_per_second?;
        Some(usize::try_from(cap / 8).unwrap_or(usize::MAX).clamp(16 << 10, 1 << 20))
    }

    /// A remote pushed back a request booked in `epoch`: wait `retry_after` (or a second) before the next
    /// request, and halve the rate, unless it was halved since that request was booked.
    pub fn pushed_back(&self, epoch: u64, retry_after: Option<Duration>) {
        let mut s = self.lock();
        let now = Instant::now();
        s.pushbacks += 1;
        let pause = retry_after.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
        s.paused_until = s.paused_until.max(now + pause);
        if epoch != s.epoch {
            return; // the same burst: already slowed down for it
        }
        let current = s.rate.unwrap_or_else(|| {
            // Uncapped: what was sent in the last second.
            #[allow(clippy::cast_precision_loss)]
            let sent = s.recent.iter().filter(|t| now.duration_since(**t) <= WINDOW).count() as f64;
            (sent / WINDOW.as_secs_f64()).max(MIN_RATE * 2.0)
        });
        s.rate = Some((current / 2.0).max(MIN_RATE));
        s.epoch += 1;
        s.slowdowns += 1;
        s.last_increase = now;
    }

    /// A request succeeded: once a second of successes, raise the rate by 5% (at least a tenth of a request per
    /// second), up to the cap.
    pub fn succeeded(&self) {
        let mut s = self.lock();
        let Some(rate) = s.rate else { return };
        let now = Instant::now();
        if now.duration_since(s.last_increase) < Duration::from_secs(1) {
            return;
        }
        s.last_increase = now;
        let raised = (rate * 1.05).max(rate + 0.1);
        s.rate = match self.caps.requests_per_second {
            Some(cap) => Some(raised.min(cap)),
            None if raised >= UNCAPPED_AGAIN => None,
            None => Some(raised),
        };
    }

    /// The request rate now allowed (`None`: no cap).
    pub fn rate(&self) -> Option<f64> {
        self.lock().rate
    }

    /// The caps it was made with.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Requests paced and push-backs seen so far.
    pub fn report(&self) -> PaceReport {
        let s = self.lock();
        PaceReport { requests: s.requests, pushbacks: s.pushbacks, slowdowns: s.slowdowns }
    }
}

/// An HTTP transport that paces every request and learns from the answers: 429, 502, 503 and 504 (with a
/// `Retry-After`) and timeouts slow the pace down; 2xx-4xx answers let it speed up again. A request refused
/// with 429 was not carried out, so it is sent again once the pace allows (up to [`PUSHBACK_RETRIES`] times),
/// and so is an idempotent one (GET, HEAD, PUT, DELETE, PROPFIND) refused with 503: services differ in
/// whether OpenDAL retries those (its WebDAV service does not retry a 429). Anything else is left to
/// OpenDAL's retry layer.
#[derive(Debug)]
pub struct PacedTransport<T> {
    inner: T,
    pace: Pace,
}

impl<T> PacedTransport<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, pace: Pace) -> Self {
        Self { inner, pace }
    }
}

fn idempotent(method: &http::Method) -> bool {
    matches!(method.as_str(), "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "PROPFIND")
}

impl<T: HttpTransport> HttpTransport for PacedTransport<T> {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let mut resent = 0;
        loop {
            let epoch = self.pace.request().await;
            // The body is reference-counted: the copy kept for sending again costs no memory. The wait for a
            // slot is not timed; the request is.
            // A streamed body (streamed.rs) is fed as the copy reads its source, at the source's pace: such a
            // request is timed by the copy's own steps, not here.
            let streamed = req.extensions().get::<crate::streamed::StreamedBody>().is_some();
            let limit = FETCH_TIMEOUT + Duration::from_secs(req.body().len() as u64 / SLOWEST_UPLOAD);
            let fetched = if streamed {
                Ok(self.inner.fetch(req.clone()).await)
            } else {
                tokio::time::timeout(limit, self.inner.fetch(req.clone())).await
            };
            let result = match fetched {
                Ok(result) => result,
                Err(_) => {
                    self.pace.pushed_back(epoch, None);
                    return Err(opendal::Error::new(
                        opendal::ErrorKind::Unexpected,
                        format!("no answer within {} s", limit.as_secs()),
                    )
                    .set_temporary());
                }
            };
            match &result {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if matches!(status, 429 | 502 | 503 | 504) {
                        self.pace.pushed_back(epoch, retry_after(resp.headers()));
                        // A streamed body cannot be sent again from here: the copy sends the file again.
                        let again = !streamed && (status == 429 || (status == 503 && idempotent(req.method())));
                        if again && resent < PUSHBACK_RETRIES {
                            resent += 1;
                            continue;
                        }
                    } else if status < 500 {
                        self.pace.succeeded();
                    }
                }
                Err(e) if e.is_temporary() => self.pace.pushed_back(epoch, None),
                Err(_) => {}
            }
            return result;
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from storage services and is treated as absent).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_never_exceed_the_cap() {
        let pace = Pace::new(Caps { requests_per_second: Some(20.0), bytes_per_second: None });
        let start = Instant::now();
        for _ in 0..101 {
            pace.request().await;
        }
        // 101 requests at 20 a second: the last one goes 5 s after the first.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(5) && took < Duration::from_millis(5050), "{took:?}");
        assert_eq!(pace.report().requests, 101);
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_is_capped() {
        let pace = Pace::new(Caps { requests_per_second: None, bytes_per_second: Some(1 << 20) });
        let start = Instant::now();
        for _ in 0..11 {
            pace.bytes(1 << 20).await;
        }
        // 11 MiB at 1 MiB/s, each paid for before it goes: 11 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(11) && took < Duration::from_millis(11_050), "{took:?}");
        assert_eq!(pace.piece(), Some(128 << 10));
        // No cap: no waiting.
        let free = Pace::new(Caps::default());
        let start = Instant::now();
        free.bytes(u64::MAX).await;
        free.request().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(free.piece(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn push_back_slows_down_further_then_resumes() {
        let pace = Pace::new(Caps { requests_per_second: Some(20.0), bytes_per_second: None });
        let first = pace.request().await;
        pace.pushed_back(first, Some(Duration::from_secs(3)));
        assert_eq!(pace.rate(), Some(10.0));
        // Another answer to the same burst: counted, waited out, not halved again.
        pace.pushed_back(first, None);
        assert_eq!(pace.rate(), Some(10.0));
        // The remote's Retry-After is waited out.
        let start = Instant::now();
        let second = pace.request().await;
        assert!(start.elapsed() >= Duration::from_secs(3), "{:?}", start.elapsed());
        // A request booked after the slow-down pushed back too: slower still.
        pace.pushed_back(second, None);
        assert_eq!(pace.rate(), Some(5.0));
        for _ in 0..40 {
            let epoch = pace.request().await;
            pace.pushed_back(epoch, None);
        }
        assert_eq!(pace.rate(), Some(MIN_RATE), "never slower than the floor");
        // Successes bring it back up, 5% a second at most, never past the cap.
        for _ in 0..100 {
            pace.succeeded();
        }
        assert!(pace.rate() < Some(0.4), "not all at once: {:?}", pace.rate());
        for _ in 0..200 {
            tokio::time::advance(Duration::from_secs(1)).await;
            pace.succeeded();
        }
        assert_eq!(pace.rate(), Some(20.0));
        let report = pace.report();
        assert_eq!((report.pushbacks, report.slowdowns), (43, 42));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_waiting_when_pushed_back_wait_again() {
        let pace = Pace::new(Caps { requests_per_second: Some(10.0), bytes_per_second: None });
        let epoch = pace.request().await;
        // Nine requests queue up at 10 a second; then the remote pushes back with Retry-After: 5.
        let waiting: Vec<_> = (0..9)
            .map(|_| {
                let p = pace.clone();
                tokio::spawn(async move {
                    let e = p.request().await;
                    (Instant::now(), e)
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let pushed = Instant::now();
        pace.pushed_back(epoch, Some(Duration::from_secs(5)));
        let mut epochs = Vec::new();
        for w in waiting {
            let (sent, e) = w.await.expect("task");
            assert!(sent >= pushed + Duration::from_secs(5), "sent during the pause: {:?}", sent - pushed);
            epochs.push(e);
        }
        // All nine refused as one burst: one more halving, not nine.
        for e in epochs {
            pace.pushed_back(e, None);
        }
        assert_eq!(pace.rate(), Some(2.5));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_cap_the_first_push_back_halves_what_was_sent() {
        let pace = Pace::new(Caps::default());
        assert_eq!(pace.rate(), None);
        let mut epoch = 0;
        for _ in 0..40 {
            epoch = pace.request().await; // all at once: 40 in the last second
        }
        pace.pushed_back(epoch, None);
        assert_eq!(pace.rate(), Some(20.0));
        // The pause, then requests at the new rate.
        let start = Instant::now();
        for _ in 0..21 {
            pace.request().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(2) && took < Duration::from_millis(2050), "{took:?}");
        for _ in 0..300 {
            tokio::time::advance(Duration::from_secs(1)).await;
            pace.succeeded();
        }
        assert_eq!(pace.rate(), None, "uncapped again once far enough up");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), None);
    }
}
