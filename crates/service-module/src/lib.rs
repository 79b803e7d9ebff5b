//! The composition seam between the `commerce` binary and the services.
//!
//! Each service crate (`services/checkout`, `services/loyalty`, `services/subscriptions`) builds a
//! [`ServiceModule`] from its own configuration (clap arguments it owns) and the process's
//! [`Shared`] resources, and says here everything it brings to a process: its gRPC services, the
//! jobs a tenant clock's advance runs, the consumer groups it reads the bus as, the events whose
//! effect it must prove (the repair journal), its background [`Task`]s and what must answer before
//! it is ready. `commerce serve --services …` is then a list of modules under one task set with
//! one shutdown: adding a service is one crate and one line in the binary.
//!
//! This crate knows no service; the services know nothing of each other's modules.

mod task;

use std::sync::Arc;

use platform::Server;
use platform::clock::{Clocks, DueJobs};

pub use task::{Readiness, Shutdown, Stage, Task, repeat_every};

/// The process's resources every module is built from.
#[derive(Clone)]
pub struct Shared {
    /// The store (embedded or MongoDB) every module of the process writes to.
    pub store: Arc<dyn store::Store>,
    /// Redis, when configured (fast path, bus).
    pub redis: Option<fastpath::Redis>,
    /// Reports Redis failures to health.
    pub degraded: fastpath::Degraded,
    /// The near cache in front of Redis of the modules' read-through caches.
    pub near_cache: fastpath::NearCache,
    /// The event bus (Redis Streams, or in process).
    pub bus: Arc<dyn events::Bus>,
    /// Tenant clocks, without due jobs (the binary adds every module's).
    pub clocks: Clocks,
    /// This process's name on the bus (a consumer name within each group), e.g. the pod name.
    pub instance: String,
    /// How long shutdown lets consumers drain what is on the bus.
    pub drain: std::time::Duration,
    /// How long a journaled event may wait for its consumers before it counts as missing.
    pub repair_after: std::time::Duration,
}

/// Why a module could not be built (a bad configuration file, say).
pub type BuildError = Box<dyn std::error::Error + Send + Sync>;

/// What one service brings to a process.
pub trait ServiceModule: Send + Sync {
    /// The module's name as `--services` spells it (`checkout`).
    fn name(&self) -> &'static str;

    /// Adds the module's gRPC services to `server`; `clocks` carries every module's due jobs (a
    /// module serving a clock API advances them all).
    fn register(&self, server: Server, clocks: &Clocks) -> Server;

    /// What advancing a tenant's clock runs for this module, in order.
    fn due_jobs(&self) -> Vec<Arc<dyn DueJobs>> {
        Vec::new()
    }

    /// The (stream, group) pairs the module's consumers read: created before the relay publishes
    /// anything, so an in-process bus knows from the first event who must settle it.
    fn consumer_groups(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Adds the events whose effect the module must prove to the repair journal.
    fn expect_effects(&self, journal: events::Journal) -> events::Journal {
        journal
    }

    /// The module's background rounds and consumers, started with the server.
    fn tasks(&self) -> Vec<Task> {
        Vec::new()
    }

    /// What must answer before the module reports SERVING (e.g. checkout's callees).
    fn readiness(&self) -> Vec<Readiness> {
        Vec::new()
    }
}
