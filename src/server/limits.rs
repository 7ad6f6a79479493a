//! Rate limits and counters keyed by account or by address: token buckets shared by every socket
//! and HTTP request of one account, fixed-window counters, and the map they live in, which is
//! capped so that no stream of new keys (addresses, usernames) can grow it without bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Most keys any one limiter map holds. Past it, stale entries go first, then half of the rest:
/// a forgotten counter only gives its key a fresh start, never a crash or unbounded memory.
pub const MAX_KEYS: usize = 50_000;

/// The address a limit counts against: IPv4 as it is, IPv6 by its /64 (one subscriber usually
/// holds a whole /64, so counting single IPv6 addresses would limit nothing). An IPv4 address
/// mapped into IPv6 counts as the IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpKey(IpAddr);

impl IpKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    IpKey(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// An entry of a [`CappedMap`] that may be forgotten once it holds nothing worth keeping.
pub trait Expiring {
    /// Whether forgetting the entry now changes nothing (its window ended, its bucket is full).
    fn expired(&self, now: Instant) -> bool;
}

/// A `HashMap` with at most `cap` keys.
pub struct CappedMap<K, V> {
    map: HashMap<K, V>,
    cap: usize,
}

impl<K: Hash + Eq, V: Expiring> CappedMap<K, V> {
    pub fn new(cap: usize) -> Self {
        CappedMap {
            map: HashMap::new(),
            cap: cap.max(2),
        }
    }

    /// The entry of `key`, made by `make` if missing; makes room first when the map is full.
    pub fn entry(&mut self, key: K, now: Instant, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            self.map.retain(|_, v| !v.expired(now));
            if self.map.len() >= self.cap {
                // Still full of live entries: forget half of them, in no particular order. The
                // cost is amortised over the inserts that filled it again.
                let mut n = 0usize;
                self.map.retain(|_, _| {
                    n += 1;
                    n.is_multiple_of(2)
                });
            }
        }
        self.map.entry(key).or_insert_with(make)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get_mut(key)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Counts events in a fixed window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    start: Instant,
    count: u32,
    length: Duration,
}

impl Window {
    pub fn new(now: Instant, length: Duration) -> Self {
        Window {
            start: now,
            count: 0,
            length,
        }
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.start) >= self.length {
            self.start = now;
            self.count = 0;
        }
    }

    /// Counts one event unless `max` were counted in this window already; `Err` carries the
    /// wait until the window ends.
    pub fn hit(&mut self, now: Instant, max: u32) -> Result<(), Duration> {
        self.check(now, max)?;
        self.count += 1;
        Ok(())
    }

    /// Like [`Window::hit`] without counting.
    pub fn check(&mut self, now: Instant, max: u32) -> Result<(), Duration> {
        self.roll(now);
        if self.count >= max {
            return Err(self
                .length
                .saturating_sub(now.duration_since(self.start))
                .max(Duration::from_secs(1)));
        }
        Ok(())
    }

    /// Counts one event, whatever the count.
    pub fn add(&mut self, now: Instant) {
        self.roll(now);
        self.count = self.count.saturating_add(1);
    }
}

impl Expiring for Window {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.start) >= self.length
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    pub fn full(now: Instant, rate: f64, burst: f64) -> Self {
        Bucket {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes `cost` tokens if at least one is there (the balance may go below zero, so a costly
    /// request is paid for by the ones after it); otherwise `Err` carries the wait until one is.
    pub fn take(&mut self, now: Instant, cost: f64) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            // The debt is bounded: no single request can silence a key for longer than a burst.
            self.tokens = (self.tokens - cost).max(-self.burst);
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

impl Bucket {
    /// Takes `cost` tokens whatever the balance (down to a burst of debt).
    pub fn charge(&mut self, now: Instant, cost: f64) {
        self.refill(now);
        self.tokens = (self.tokens - cost).max(-self.burst);
    }
}

impl Expiring for Bucket {
    fn expired(&self, now: Instant) -> bool {
        // A full bucket is what a new key gets: forgetting it changes nothing.
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// Whose budget a request spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    Account(i64),
    /// A guest (anonymous mode), by address.
    Guest(IpKey),
}

/// The message rate of every account (and of guests by address), shared by all its sockets and
/// the HTTP API: opening another socket gives no fresh burst.
#[derive(Clone)]
pub struct Rates {
    buckets: Arc<Mutex<CappedMap<RateKey, Bucket>>>,
    rate: f64,
    burst: f64,
    /// On a node of a cluster, what each account spent here since the other nodes were told.
    spent: Option<Arc<Mutex<HashMap<i64, f64>>>>,
}

impl Rates {
    /// `per_second` frames a second, bursts of twice as many.
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Rates {
            buckets: Arc::new(Mutex::new(CappedMap::new(MAX_KEYS))),
            rate,
            burst: rate * 2.0,
            spent: None,
        }
    }

    pub fn per_second(&self) -> f64 {
        self.rate
    }

    /// Spends `cost` of the key's budget, or says how long until it has some again.
    pub fn take(&self, key: RateKey, cost: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let cost = f64::from(cost.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let taken = buckets
            .entry(key, now, || Bucket::full(now, self.rate, self.burst))
            .take(now, cost);
        drop(buckets);
        if taken.is_ok() {
            if let (Some(spent), RateKey::Account(id)) = (&self.spent, key) {
                *spent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(id)
                    .or_default() += cost;
            }
        }
        taken
    }

    /// Keeps what each account spends, for [`Rates::drain_spent`]: on a node of a cluster the
    /// other nodes charge it to the same accounts, so that one budget holds across nodes.
    pub fn shared(mut self) -> Self {
        self.spent = Some(Arc::default());
        self
    }

    /// What each account spent here since the last call.
    pub fn drain_spent(&self) -> Vec<(i64, f64)> {
        let Some(spent) = &self.spent else {
            return Vec::new();
        };
        std::mem::take(&mut *spent.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// Charges an account what it spent on another node (the balance may go into debt, as far
    /// as a burst).
    pub fn charge(&self, account: i64, cost: f64) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(RateKey::Account(account), now, || {
                Bucket::full(now, self.rate, self.burst)
            })
            .charge(now, cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(IpKey::of(a), IpKey::of(b));
        assert_ne!(IpKey::of(a), IpKey::of(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(IpKey::of(mapped), IpKey::of(v4));
        assert_eq!(IpKey::of(a).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn a_capped_map_never_passes_its_cap() {
        let now = Instant::now();
        let mut m: CappedMap<u32, Window> = CappedMap::new(100);
        for k in 0..10_000 {
            m.entry(k, now, || Window::new(now, Duration::from_secs(60)))
                .add(now);
            assert!(m.len() <= 100);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_lends_a_burst_then_refills_at_its_rate() {
        let now = Instant::now();
        let mut b = Bucket::full(now, 10.0, 20.0);
        for _ in 0..20 {
            assert!(b.take(now, 1.0).is_ok());
        }
        let wait = b.take(now, 1.0).expect_err("empty");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(b.take(now + Duration::from_millis(100), 1.0).is_ok());
        // A costly take goes into debt, paid by the wait of the next one.
        let later = now + Duration::from_secs(10);
        assert!(b.take(later, 30.0).is_ok());
        let wait = b.take(later, 1.0).expect_err("in debt");
        assert!((wait.as_secs_f64() - 1.1).abs() < 1e-6, "{wait:?}");
        // The debt never goes below a burst.
        let much_later = later + Duration::from_secs(10);
        assert!(b.take(much_later, 1000.0).is_ok());
        let wait = b.take(much_later, 1.0).expect_err("in debt");
        assert!((wait.as_secs_f64() - 2.1).abs() < 1e-6, "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_account_has_one_budget_however_it_connects() {
        let rates = Rates::new(5);
        let me = RateKey::Account(1);
        for _ in 0..10 {
            assert!(rates.take(me, 1).is_ok());
        }
        assert!(rates.take(me, 1).is_err());
        assert!(rates.take(RateKey::Account(2), 1).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn what_an_account_spends_on_another_node_comes_off_its_budget_here() {
        let here = Rates::new(5).shared();
        let there = Rates::new(5).shared();
        let me = RateKey::Account(1);
        for _ in 0..6 {
            assert!(there.take(me, 1).is_ok());
        }
        let spent = there.drain_spent();
        assert_eq!(spent, vec![(1, 6.0)]);
        assert!(there.drain_spent().is_empty());
        for (account, cost) in spent {
            here.charge(account, cost);
        }
        // A burst of 10 less the 6 spent there.
        for _ in 0..4 {
            assert!(here.take(me, 1).is_ok());
        }
        assert!(here.take(me, 1).is_err());
    }
}
