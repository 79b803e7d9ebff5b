//! `contract-policy DESCRIPTOR_SET...`: checks encoded FileDescriptorSets (e.g. from
//! `buf build --as-file-descriptor-set -o set.binpb`) against the house rules. Prints one
//! `file:line: rule: message` line per violation and exits 1 when there is any.
//!
//! `contract-policy --against RELEASED [--accepted FILE] DESCRIPTOR_SET...`: instead compares the
//! sets (the working tree) with the released image for behavioural breaks, in the same form;
//! breaks accepted by a reviewed entry of FILE pass. `CONTRACT_TODAY=YYYY-MM-DD` overrides today's
//! date (UTC), which decides deprecation sunsets and entry expiry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use jiff::civil::Date;
use prost_reflect::DescriptorPool;

use contract_policy::{AcceptedFile, entry_template};

/// Check protobuf contracts against the house rules, or against the released contract's behaviour.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Encoded FileDescriptorSet(s) with source info, e.g. built by `buf build --as-file-descriptor-set`.
    #[arg(required_unless_present = "list_rules")]
    descriptor_sets: Vec<PathBuf>,
    /// Print the rules and exit.
    #[arg(long)]
    list_rules: bool,
    /// Released image (e.g. proto/releases/commerce-v1.binpb): check behavioural compatibility
    /// with it instead of the house rules.
    #[arg(long, value_name = "RELEASED_IMAGE")]
    against: Option<PathBuf>,
    /// Reviewed accepted behavioural breaks (e.g. proto/BREAKING-ACCEPTED.toml); with --against.
    #[arg(long, value_name = "FILE", requires = "against")]
    accepted: Option<PathBuf>,
}

/// Overrides today's date (`YYYY-MM-DD`), for tests and for checking a date ahead.
const TODAY_VARIABLE: &str = "CONTRACT_TODAY";

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.list_rules {
        list_rules();
        return Ok(ExitCode::SUCCESS);
    }
    let current = load(&args.descriptor_sets)?;
    let passed = match &args.against {
        Some(released) => behaviour(&load(&[released])?, &current, args.accepted.as_deref())?,
        None => house_rules(&current),
    };
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn list_rules() {
    println!("# house rules (contract-policy DESCRIPTOR_SET...)");
    for (rule, demand) in contract_policy::RULES {
        println!("{rule}: {demand}");
    }
    println!(
        "\n# behavioural rules (contract-policy --against RELEASED --accepted FILE DESCRIPTOR_SET...)"
    );
    for (rule, demand) in contract_policy::BEHAVIOUR_RULES
        .iter()
        .chain(contract_policy::ACCEPTED_FILE_RULES)
    {
        println!("{rule}: {demand}");
    }
}

fn load<P: AsRef<Path>>(paths: &[P]) -> anyhow::Result<DescriptorPool> {
    let mut pool = DescriptorPool::new();
    for path in paths {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        pool.decode_file_descriptor_set(bytes.as_slice())
            .with_context(|| format!("decoding {} as a FileDescriptorSet", path.display()))?;
    }
    Ok(pool)
}

fn house_rules(pool: &DescriptorPool) -> bool {
    let violations = contract_policy::check(pool);
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
    violations.is_empty()
}

fn behaviour(
    released: &DescriptorPool,
    current: &DescriptorPool,
    accepted: Option<&Path>,
) -> anyhow::Result<bool> {
    let today = today()?;
    let accepted = match accepted {
        Some(path) => AcceptedFile::load(path)?,
        None => AcceptedFile::default(),
    };
    let findings = contract_policy::behaviour::compare(released, current, today);
    let settlement = accepted.settle(findings, today);

    for finding in &settlement.refused {
        println!("{finding}");
    }
    for problem in &settlement.entry_problems {
        println!("{problem}");
    }
    for finding in &settlement.accepted {
        eprintln!("accepted by {}: {finding}", accepted.path);
    }
    eprintln!(
        "contract-policy: behaviour against the release on {today}: {} break(s) refused, {} accepted, {} entry problem(s)",
        settlement.refused.len(),
        settlement.accepted.len(),
        settlement.entry_problems.len()
    );
    if !settlement.refused.is_empty() {
        let file = if accepted.path.is_empty() {
            "proto/BREAKING-ACCEPTED.toml"
        } else {
            &accepted.path
        };
        eprintln!(
            "\nEach break above refuses callers the released contract accepts. Undo it, move it to a new \
             package version, or, if it is intended and reviewed, accept it in {file} \
             (docs/api-versioning.md) with an entry such as:\n"
        );
        for finding in &settlement.refused {
            eprintln!("{}", entry_template(finding));
        }
    }
    Ok(settlement.passed())
}

/// Today (UTC), or the date in `CONTRACT_TODAY`.
fn today() -> anyhow::Result<Date> {
    match std::env::var(TODAY_VARIABLE) {
        Ok(text) if !text.is_empty() => text
            .parse()
            .with_context(|| format!("{TODAY_VARIABLE}={text:?} is not a date (YYYY-MM-DD)")),
        _ => Ok(jiff::Timestamp::now()
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .date()),
    }
}
