//! The split topology for tests, every part a real process: Redis, a MongoDB-compatible server
//! (SecantusDB), the PSP (`commerce psp serve`), loyalty, checkout replicas and subscriptions
//! (`commerce serve --services …`), each service signing its calls with its own key.

use std::time::Duration;

use super::client::{Client, Protocol, Routed};
use super::{Running, spawn};

/// What every process of the topology shares: Redis, the database, the service keys.
pub struct Base {
    pub redis: fastpath::testing::RedisServer,
    pub mongo: store::testing::MongoServer,
    /// Service keys (`checkout.pem`, `subscriptions.pem`) and the JWKS every process trusts.
    pub keys: tempfile::TempDir,
    /// Extra flags every service process gets.
    extra: Vec<String>,
}

/// The running topology.
pub struct Split {
    pub base: Base,
    pub psp: Running,
    pub loyalty: Running,
    pub checkout: Vec<Running>,
    pub subscriptions: Running,
}

fn generate_key(dir: &std::path::Path, service: &str) {
    let output = super::cli(&[
        "keys",
        "generate",
        "--service",
        service,
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{output:?}");
}

impl Base {
    /// Redis, the database and the keys, with `extra` flags for every service process.
    pub fn start(extra: &[&str]) -> Base {
        let keys = tempfile::tempdir().unwrap();
        generate_key(keys.path(), "checkout");
        generate_key(keys.path(), "subscriptions");
        Base {
            redis: fastpath::testing::RedisServer::start_with(&[
                "--appendonly",
                "yes",
                "--dir",
                keys.path().to_str().unwrap(),
            ]),
            mongo: store::testing::MongoServer::start(),
            keys,
            extra: extra.iter().map(|flag| (*flag).to_owned()).collect(),
        }
    }

    fn jwks(&self) -> String {
        self.keys
            .path()
            .join("jwks.json")
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn key(&self, service: &str) -> String {
        self.keys
            .path()
            .join(format!("{service}.pem"))
            .to_str()
            .unwrap()
            .to_owned()
    }

    /// Starts the PSP process, trusting the services' keys.
    pub fn start_psp(&self) -> Running {
        self.start_psp_on(tempfile::tempdir().unwrap(), "127.0.0.1:0")
    }

    /// Starts the PSP process on `data_dir`'s files, listening on `addr`.
    pub fn start_psp_on(&self, data_dir: tempfile::TempDir, addr: &str) -> Running {
        let args: Vec<String> = [
            "psp",
            "serve",
            "--listen",
            addr,
            "--admin-listen",
            "127.0.0.1:0",
            "--shutdown-grace-seconds",
            "2",
            "--data-dir",
            data_dir.path().to_str().unwrap(),
            "--jwks-file",
            &self.jwks(),
        ]
        .map(str::to_owned)
        .to_vec();
        spawn(data_dir, &args, &[])
    }

    /// Starts one service process (`--services name`) of the topology with `flags`.
    pub fn start_service(&self, name: &str, flags: &[&str]) -> Running {
        let data_dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "serve",
            "--services",
            name,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--shutdown-grace-seconds",
            "2",
            "--shutdown-delay-seconds",
            "0",
            "--data-dir",
            data_dir.path().to_str().unwrap(),
            "--redis-url",
            &self.redis.url(),
            "--mongodb-uri",
            &self.mongo.uri(),
            "--jwks-file",
            &self.jwks(),
            "--payment-resolver-seconds",
            "1",
            "--event-repair-seconds",
            "1",
            "--event-repair-after-seconds",
            "2",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(self.extra.iter().cloned());
        args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        spawn(data_dir, &args, &[])
    }

    /// Starts a checkout replica calling `loyalty` and `psp`.
    pub fn start_checkout(&self, loyalty: &Running, psp: &Running) -> Running {
        self.start_checkout_at(&url(loyalty), &url(psp))
    }

    /// Starts a checkout replica calling loyalty at `loyalty` and the PSP at `psp` (URLs).
    pub fn start_checkout_at(&self, loyalty: &str, psp: &str) -> Running {
        self.start_service(
            "checkout",
            &[
                "--loyalty-url",
                loyalty,
                "--psp-url",
                psp,
                "--service-key-file",
                &self.key("checkout"),
                "--service-name",
                "checkout",
            ],
        )
    }

    /// Starts subscriptions charging through `psp`.
    pub fn start_subscriptions(&self, psp: &Running) -> Running {
        self.start_service(
            "subscriptions",
            &[
                "--psp-url",
                &url(psp),
                "--service-key-file",
                &self.key("subscriptions"),
                "--service-name",
                "subscriptions",
            ],
        )
    }
}

impl Split {
    /// Starts everything, with `checkouts` checkout replicas and `extra` flags for every service
    /// process.
    pub fn start(checkouts: usize, extra: &[&str]) -> Split {
        let base = Base::start(extra);
        let psp = base.start_psp();
        let loyalty = base.start_service("loyalty", &[]);
        let checkout = (0..checkouts)
            .map(|_| base.start_checkout(&loyalty, &psp))
            .collect();
        let subscriptions = base.start_subscriptions(&psp);
        Split {
            base,
            psp,
            loyalty,
            checkout,
            subscriptions,
        }
    }

    /// Stops the PSP with SIGKILL and starts it again on its files and at its address.
    pub fn restart_psp(&mut self) {
        let addr = self.psp.addr.clone();
        let _ = self.psp.child.kill();
        let placeholder = self.base.start_psp();
        let (_, files) =
            std::mem::replace(&mut self.psp, placeholder).wait_exit(Duration::from_secs(10));
        let _ = self.psp.child.kill();
        let _ = self.psp.child.wait();
        self.psp = self.base.start_psp_on(files, &addr);
    }

    /// Stops loyalty with SIGKILL and starts it again at its address (on the shared database).
    pub fn restart_loyalty(&mut self) {
        let _ = self.loyalty.child.kill();
        let _ = self.loyalty.child.wait();
        let addr = self.loyalty.addr.clone();
        self.loyalty = self.base.start_service("loyalty", &["--listen", &addr]);
    }

    /// A caller that reaches each package on its process (checkout replica `replica`).
    pub fn caller(&self, replica: usize, token: &str) -> Routed {
        let client = |running: &Running| Client {
            protocol: Protocol::Grpc,
            addr: running.addr.clone(),
            token: token.to_owned(),
            tenant: "demo".into(),
            timeout: None,
        };
        Routed {
            checkout: client(&self.checkout[replica]),
            loyalty: client(&self.loyalty),
            subscriptions: client(&self.subscriptions),
        }
    }
}

/// A server's URL.
pub fn url(running: &Running) -> String {
    format!("http://{}", running.addr)
}

/// How long to wait for something the topology does by itself (events across processes, the
/// payment round).
pub const SETTLE: Duration = Duration::from_secs(30);

/// A service token signed with `pem` (under its own key id) for tenant `demo`.
pub fn service_token(pem: &[u8], scope: &str, expires_in: i64) -> String {
    let kid = platform::identity::key_id("checkout", pem).unwrap();
    service_token_as(&kid, pem, scope, expires_in)
}

/// A service token signed with `pem` for tenant `demo`, claiming key id `kid`.
pub fn service_token_as(kid: &str, pem: &[u8], scope: &str, expires_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        &serde_json::json!({
            "sub": "service:checkout",
            "tenant": "demo",
            "scope": scope,
            "iat": now,
            "exp": now + expires_in,
        }),
        &jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap(),
    )
    .unwrap()
}
