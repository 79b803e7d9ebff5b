//! Where the binary keeps its state: the embedded store under `--data-dir` by default, MongoDB when
//! `MONGODB_URI` is set; and the event bus: Redis Streams when Redis is configured, in process
//! otherwise.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use store::{EmbeddedOptions, EmbeddedStore, MongoOptions, MongoStore, Store};

/// Storage settings shared by `serve` and the operator commands.
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Directory of the embedded store (used when no MongoDB is configured).
    #[arg(long, env = "COMMERCE_DATA_DIR", default_value = ".commerce-data")]
    pub data_dir: PathBuf,
    /// Memory for the embedded store's page cache, in MiB. Pages outside it are read from the
    /// file at every access, so size it to the data the server touches (up to the file's size).
    #[arg(
        long,
        env = "COMMERCE_STORE_CACHE_MIB",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(16..=1_048_576)
    )]
    pub store_cache_mib: u32,
    /// MongoDB connection string; when set, state lives in MongoDB instead of the embedded store.
    #[arg(long, env = "MONGODB_URI")]
    pub mongodb_uri: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "COMMERCE_MONGODB_DATABASE", default_value = "commerce")]
    pub mongodb_database: String,
    /// Acknowledge MongoDB writes with `w: 1` instead of `majority` (faster, loses acknowledged
    /// writes on a fail-over).
    #[arg(long, env = "COMMERCE_MONGODB_W1")]
    pub mongodb_w1: bool,
}

impl fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreArgs")
            .field("data_dir", &self.data_dir)
            .field("store_cache_mib", &self.store_cache_mib)
            // Connection strings carry credentials.
            .field("mongodb_uri", &self.mongodb_uri.as_ref().map(|_| "<set>"))
            .field("mongodb_database", &self.mongodb_database)
            .field("mongodb_w1", &self.mongodb_w1)
            .finish()
    }
}

impl StoreArgs {
    /// The embedded store's file.
    pub fn embedded_path(&self) -> PathBuf {
        self.data_dir.join("store.redb")
    }

    /// The embedded store's options from these settings.
    pub fn embedded_options(&self) -> EmbeddedOptions {
        EmbeddedOptions {
            cache_bytes: usize::try_from(self.store_cache_mib)
                .unwrap_or(usize::MAX)
                .saturating_mul(1 << 20),
            ..EmbeddedOptions::default()
        }
    }

    /// Opens the configured store.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        match &self.mongodb_uri {
            Some(uri) => {
                let options = MongoOptions {
                    majority: !self.mongodb_w1,
                    ..MongoOptions::default()
                };
                let mongo = MongoStore::connect(uri, &self.mongodb_database, options)
                    .await
                    .context("connecting to MongoDB")?;
                if !mongo.supports_transactions() {
                    eprintln!(
                        "commerce: WARNING MongoDB is standalone: idempotent commits need a replica set and will fail"
                    );
                }
                Ok(platform::telemetry::traced_store(
                    Arc::new(mongo),
                    "mongodb",
                ))
            }
            None => {
                std::fs::create_dir_all(&self.data_dir)
                    .with_context(|| format!("creating {}", self.data_dir.display()))?;
                let path = self.embedded_path();
                let store = EmbeddedStore::open(&path, self.embedded_options())
                    .with_context(|| format!("opening {}", path.display()))?;
                Ok(platform::telemetry::traced_store(Arc::new(store), "redb"))
            }
        }
    }

    /// Where state lives, for the banner.
    pub fn describe(&self) -> String {
        match &self.mongodb_uri {
            Some(_) => format!("MongoDB database `{}`", self.mongodb_database),
            None => format!("embedded store {}", self.embedded_path().display()),
        }
    }
}
