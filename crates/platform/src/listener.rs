//! Accepting connections without letting one client, or a full descriptor table, take the server
//! down: a cap on open connections per listener and per client address (beyond them a connection
//! is closed at once), and a growing pause when `accept` itself fails — with the descriptor table
//! full (EMFILE) the pending connection stays queued and `accept` fails again at once, so retrying
//! without a pause spins a core and starves everything else.
//!
//! Both ports (API and admin) accept through this.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// Limits on the connections of one listener, and on what each connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time a connection gets to send a request's headers (HTTP/1: each request's head, idle
    /// keep-alive waits included; any protocol: its first request, HTTP/2 preface included).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes either way for this long is closed
    /// (HTTP/2: GOAWAY first).
    pub idle_timeout: Duration,
    /// Open connections per listener; 0 for no cap.
    pub max_connections: usize,
    /// Open connections per client address; 0 for no cap. Behind a proxy every client shares the
    /// proxy's address: raise it (or set 0) there.
    pub max_connections_per_address: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Largest request header section, in bytes (HTTP/2 header list; HTTP/1 head, at least 8 KiB).
    pub max_header_bytes: u32,
    /// Interval of HTTP/2 keep-alive pings; `None` sends none.
    pub keep_alive_interval: Option<Duration>,
    /// A ping unanswered this long closes the HTTP/2 connection.
    pub keep_alive_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// Close to what Envoy and NGINX ship with.
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 256,
            max_concurrent_streams: 200,
            max_header_bytes: 32 * 1024,
            keep_alive_interval: Some(Duration::from_secs(30)),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

/// A listener that hands out connections within the caps.
pub struct Listener {
    listener: TcpListener,
    slots: Arc<Slots>,
    backoff: Backoff,
    refusals: RefusalLog,
    name: &'static str,
}

impl Listener {
    /// Accepts on `listener` within `limits`; `name` labels its log lines (`api`, `admin`).
    pub fn new(listener: TcpListener, limits: &ConnectionLimits, name: &'static str) -> Self {
        Listener {
            listener,
            slots: Arc::new(Slots {
                max_total: limits.max_connections,
                max_per_address: limits.max_connections_per_address,
                open: Mutex::default(),
            }),
            backoff: Backoff::default(),
            refusals: RefusalLog::default(),
            name,
        }
    }

    /// The next connection within the caps, with the slot it holds until dropped. Connections
    /// over a cap are closed; failures of `accept` pause the loop (10 ms, doubling to 1 s) and are
    /// logged once per burst.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, Slot) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.backoff.succeeded(self.name);
                    match self.slots.take(peer.ip()) {
                        Ok(slot) => return (stream, peer, slot),
                        Err(cap) => {
                            // Dropping the stream closes it: the client sees the connection end.
                            drop(stream);
                            self.refusals.note(self.name, peer, cap);
                        }
                    }
                }
                // The peer gave up while queued: nothing is wrong with the listener.
                Err(error) if is_per_connection(&error) => {}
                Err(error) => self.backoff.failed(self.name, &error).await,
            }
        }
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Open connections, per listener and per client address.
#[derive(Debug)]
struct Slots {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Listener,
    Address,
}

impl Slots {
    fn take(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Cap> {
        // A poisoned lock only means another connection's bookkeeping panicked; the counts are
        // still whole numbers, so keep going.
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.max_total > 0 && open.total >= self.max_total {
            return Err(Cap::Listener);
        }
        let of_address = open.by_address.entry(address).or_default();
        if self.max_per_address > 0 && *of_address >= self.max_per_address {
            return Err(Cap::Address);
        }
        *of_address += 1;
        open.total += 1;
        Ok(Slot {
            slots: self.clone(),
            address,
        })
    }

    fn give_back(&self, address: IpAddr) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_address.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Forget addresses without connections, so the map stays as small as what is open.
                open.by_address.remove(&address);
            }
        }
    }
}

/// A connection's place under the caps; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.give_back(self.address);
    }
}

/// The pause after failed `accept`s: 10 ms, doubling up to 1 s, back to nothing after a success.
/// Failures are reported at most once every 10 s (with how many went unreported): while the table
/// is full, accepting alternates between a success (a descriptor freed) and new failures.
#[derive(Debug, Default)]
struct Backoff {
    /// Failures since the last success.
    consecutive: u32,
    last_report: Option<Instant>,
    unreported: u64,
    /// A warning went out and no recovery line yet.
    reported: bool,
}

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Backoff {
    async fn failed(&mut self, listener: &str, error: &io::Error) {
        if self
            .last_report
            .is_none_or(|at| at.elapsed() >= REPORT_EVERY)
        {
            tracing::warn!(
                listener,
                %error,
                unreported_failures = self.unreported,
                "accepting connections failed (too many open files?); pausing between attempts until it works again"
            );
            self.last_report = Some(Instant::now());
            self.unreported = 0;
            self.reported = true;
        } else {
            self.unreported += 1;
        }
        let pause = FIRST_PAUSE
            .saturating_mul(2u32.saturating_pow(self.consecutive.min(10)))
            .min(LONGEST_PAUSE);
        self.consecutive = self.consecutive.saturating_add(1);
        tokio::time::sleep(pause).await;
    }

    fn succeeded(&mut self, listener: &str) {
        if self.reported {
            tracing::info!(listener, "accepting connections again");
            self.reported = false;
        }
        self.consecutive = 0;
    }
}

/// Connections closed at a cap: logged at most once every 10 s, with how many since.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    since_last: u64,
}

impl RefusalLog {
    fn note(&mut self, listener: &str, peer: SocketAddr, cap: Cap) {
        self.since_last += 1;
        if self
            .last
            .is_some_and(|at| at.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        let cap = match cap {
            Cap::Listener => "connections per listener",
            Cap::Address => "connections per client address",
        };
        tracing::warn!(
            listener,
            %peer,
            cap,
            refused = self.since_last,
            "connection closed at a connection cap"
        );
        self.last = Some(Instant::now());
        self.since_last = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(max_total: usize, max_per_address: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_total,
            max_per_address,
            open: Mutex::default(),
        })
    }

    #[test]
    fn an_address_at_its_cap_is_refused_while_others_get_slots() {
        let slots = slots(10, 2);
        let (a, b) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert_eq!(slots.take(a).unwrap_err(), Cap::Address);
        let _other = slots.take(b).unwrap();
        drop(first);
        assert!(slots.take(a).is_ok(), "a freed slot is usable again");
    }

    #[test]
    fn the_listener_cap_counts_every_address_and_forgets_closed_ones() {
        let slots = slots(2, 0);
        let one = slots.take([10, 0, 0, 1].into()).unwrap();
        let two = slots.take([10, 0, 0, 2].into()).unwrap();
        assert_eq!(slots.take([10, 0, 0, 3].into()).unwrap_err(), Cap::Listener);
        drop((one, two));
        let open = slots.open.lock().unwrap();
        assert_eq!((open.total, open.by_address.len()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn accept_failures_pause_longer_each_time_up_to_a_second() {
        let mut backoff = Backoff::default();
        let error = io::Error::from_raw_os_error(24); // EMFILE
        let mut pauses = Vec::new();
        for _ in 0..10 {
            let started = tokio::time::Instant::now();
            backoff.failed("test", &error).await;
            pauses.push(started.elapsed().as_millis());
        }
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.succeeded("test");
        let started = tokio::time::Instant::now();
        backoff.failed("test", &error).await;
        assert_eq!(
            started.elapsed().as_millis(),
            10,
            "a success resets the pause"
        );
    }
}
