//! `commerce keys generate`: a service's signing key for its calls to other services, and the
//! JWKS entry its callees trust it by.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

/// `commerce keys …`
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Write a new ES256 key for a service (`<dir>/<service>.pem`, keep it secret) and add its
    /// public key to `<dir>/jwks.json` (give that file to the callees with `--jwks-file`).
    Generate {
        /// The service's name: its key id and its tokens' subject (`service:<name>`).
        #[arg(long)]
        service: String,
        /// Directory for the key and the JWKS.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

pub fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let KeysCommand::Generate { service, out } = command;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let (pem, jwk) = platform::identity::generate_es256(&service)?;
    let key_path = out.join(format!("{service}.pem"));
    write_secret(&key_path, pem.as_bytes())?;
    let jwks_path = out.join("jwks.json");
    let mut jwks: serde_json::Value = match std::fs::read_to_string(&jwks_path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JWKS", jwks_path.display()))?,
        Err(_) => serde_json::json!({ "keys": [] }),
    };
    let keys = jwks["keys"]
        .as_array_mut()
        .with_context(|| format!("{} has no \"keys\" list", jwks_path.display()))?;
    // A new key for the service replaces its old one in this file; rotate without downtime by
    // publishing both in the callees' JWKS until every caller signs with the new one.
    keys.retain(|key| key["kid"] != service.as_str());
    keys.push(jwk);
    std::fs::write(&jwks_path, serde_json::to_string_pretty(&jwks)? + "\n")
        .with_context(|| format!("writing {}", jwks_path.display()))?;
    println!("{}: private key of service:{service}", key_path.display());
    println!("{}: its public key (kid {service})", jwks_path.display());
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_secret(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}
