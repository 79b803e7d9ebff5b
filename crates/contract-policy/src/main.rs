//! `contract-policy DESCRIPTOR_SET...`: checks encoded FileDescriptorSets (e.g. from
//! `buf build --as-file-descriptor-set -o set.binpb`) against the house rules. Prints one
//! `file:line: rule: message` line per violation and exits 1 when there is any.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use prost_reflect::DescriptorPool;

/// Check protobuf contracts against the house rules.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Encoded FileDescriptorSet(s) with source info, e.g. built by `buf build --as-file-descriptor-set`.
    #[arg(required_unless_present = "list_rules")]
    descriptor_sets: Vec<PathBuf>,
    /// Print the rules and exit.
    #[arg(long)]
    list_rules: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.list_rules {
        for (rule, demand) in contract_policy::RULES {
            println!("{rule}: {demand}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut pool = DescriptorPool::new();
    for path in &args.descriptor_sets {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        pool.decode_file_descriptor_set(bytes.as_slice())
            .with_context(|| format!("decoding {} as a FileDescriptorSet", path.display()))?;
    }
    let violations = contract_policy::check(&pool);
    for violation in &violations {
        println!("{violation}");
    }
    let rpcs: usize = pool
        .files()
        .filter(|file| file.package_name().starts_with("commerce."))
        .flat_map(|file| file.services().collect::<Vec<_>>())
        .map(|service| service.methods().len())
        .sum();
    eprintln!(
        "contract-policy: {} RPCs checked against {} rules, {} violation(s)",
        rpcs,
        contract_policy::RULES.len(),
        violations.len()
    );
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
