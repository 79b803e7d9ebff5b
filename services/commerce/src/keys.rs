//! `commerce keys generate`: a service's signing key for its calls to other services, and the
//! JWKS entry its callees trust it by.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

/// `commerce keys …`
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Write a new ES256 key for a service (`<dir>/<service>.pem`, keep it secret) and add its
    /// public key to `<dir>/jwks.json` (give that file to the callees with `--jwks-file`) under
    /// the key id `<service>-<hash of the key>`; older keys of the service stay listed until
    /// removed, so a rotation needs no downtime.
    Generate {
        /// The service's name: its tokens' subject (`service:<name>`) and its key id's prefix.
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
    // Each key has its own id (derived from the key), so the service's old key stays listed
    // next to the new one: callees trusting this file accept both while the callers restart
    // with the new key. Remove the old entry afterwards (docs/topology.md, rotation).
    let kid = jwk["kid"].as_str().unwrap_or_default().to_owned();
    let prefix = format!("{service}-");
    let older = keys
        .iter()
        .filter(|key| {
            key["kid"]
                .as_str()
                .is_some_and(|id| id.starts_with(&prefix))
        })
        .count();
    keys.push(jwk);
    std::fs::write(&jwks_path, serde_json::to_string_pretty(&jwks)? + "\n")
        .with_context(|| format!("writing {}", jwks_path.display()))?;
    println!("{}: private key of service:{service}", key_path.display());
    println!("{}: its public key (kid {kid})", jwks_path.display());
    if older > 0 {
        println!(
            "{}: still lists {older} older key(s) of {service}: remove them once every {service} process signs with the new key",
            jwks_path.display()
        );
    }
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
