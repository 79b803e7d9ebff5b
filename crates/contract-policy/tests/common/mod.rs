//! A throw-away copy of the contract workspace and a run of `scripts/contract-gate` on it, shared
//! by the gate tests. Needs the npm-installed buf CLI and `.deps/` (both set up by `scripts/test`).

// Each test crate uses its own part of this kit.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::{fs, io};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// A throw-away copy of the contract workspace (`proto/`, `buf.yaml`, `buf.gen.yaml`, `.deps`),
/// checked against the committed release image unless [`Workspace::release`] cut its own.
pub struct Workspace {
    dir: tempfile::TempDir,
    baseline: PathBuf,
    today: Option<String>,
}

impl Workspace {
    pub fn copy() -> Self {
        let repo = repo_root();
        assert!(
            repo.join("node_modules/.bin/buf").exists(),
            "buf CLI missing: run scripts/test (it runs `npm ci`)"
        );
        if !repo
            .join(".deps/protovalidate/buf/validate/validate.proto")
            .exists()
        {
            let status = Command::new(repo.join("scripts/fetch-proto-deps"))
                .status()
                .expect("run fetch-proto-deps");
            assert!(status.success(), "scripts/fetch-proto-deps failed");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        copy_dir(&repo.join("proto"), &dir.path().join("proto")).expect("copy proto/");
        for file in ["buf.yaml", "buf.gen.yaml"] {
            fs::copy(repo.join(file), dir.path().join(file)).expect("copy buf config");
        }
        std::os::unix::fs::symlink(repo.join(".deps"), dir.path().join(".deps"))
            .expect("link .deps");
        Workspace {
            dir,
            baseline: repo.join("proto/releases/commerce-v1.binpb"),
            today: None,
        }
    }

    /// Rewrites one file under `proto/commerce/`; the edit must change something.
    pub fn edit(&self, file: &str, change: impl FnOnce(&str) -> String) -> &Self {
        let path = self.dir.path().join("proto/commerce").join(file);
        let before = fs::read_to_string(&path).expect("read proto");
        let after = change(&before);
        assert_ne!(before, after, "the edit of {file} changed nothing");
        fs::write(&path, after).expect("write proto");
        self
    }

    /// Writes `entries` as the start of the accepted-breaks file, `proto/BREAKING-ACCEPTED.toml`
    /// (so their lines are known), followed by the entries the repository already has: those
    /// accept the repository's own reviewed breaks against the committed release, which would
    /// otherwise be refused in every test.
    pub fn accept(&self, entries: &str) -> &Self {
        let path = self.dir.path().join("proto/BREAKING-ACCEPTED.toml");
        let current = fs::read_to_string(&path).unwrap_or_default();
        let existing = current
            .find("\n[[accepted]]")
            .map_or("", |start| &current[start..]);
        fs::write(&path, format!("{}\n{existing}", entries.trim_end()))
            .expect("write accepted-breaks file");
        self
    }

    /// Cuts a release of the copy's contracts as they are now (what `scripts/release-contract`
    /// does) and checks later edits against it instead of the committed release image.
    pub fn release(&mut self) -> &mut Self {
        let image = self.dir.path().join("released.binpb");
        let output = Command::new(repo_root().join("node_modules/.bin/buf"))
            .args(["build", "proto", "-o"])
            .arg(&image)
            .current_dir(self.dir.path())
            .output()
            .expect("run buf build");
        assert!(
            output.status.success(),
            "buf build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.baseline = image;
        // As scripts/release-contract does: the release holds the breaks accepted before it, so
        // their entries go (they would be stale against it).
        let accepted = self.dir.path().join("proto/BREAKING-ACCEPTED.toml");
        let text = fs::read_to_string(&accepted).unwrap_or_default();
        let header = text.split("\n[[accepted]]").next().unwrap_or_default();
        fs::write(&accepted, format!("{}\n", header.trim_end())).expect("empty accepted file");
        self
    }

    /// The date the gate takes as today (`CONTRACT_TODAY`).
    pub fn on(&mut self, date: &str) -> &mut Self {
        self.today = Some(date.to_owned());
        self
    }

    /// 1-based line of the first line containing `needle` in `file`.
    pub fn line_of(&self, file: &str, needle: &str) -> usize {
        let text = fs::read_to_string(self.dir.path().join("proto/commerce").join(file))
            .expect("read proto");
        text.lines()
            .position(|line| line.contains(needle))
            .expect("needle present")
            + 1
    }

    pub fn gate(&self, steps: &[&str]) -> GateRun {
        let repo = repo_root();
        let mut command = Command::new(repo.join("scripts/contract-gate"));
        command
            .args(steps)
            .env("CONTRACT_ROOT", self.dir.path())
            .env("CONTRACT_BASELINE", &self.baseline)
            .env("CONTRACT_POLICY_BIN", env!("CARGO_BIN_EXE_contract-policy"))
            .env_remove("CONTRACT_TODAY");
        if let Some(today) = &self.today {
            command.env("CONTRACT_TODAY", today);
        }
        let output: Output = command.output().expect("run scripts/contract-gate");
        GateRun {
            passed: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }
}

pub struct GateRun {
    pub passed: bool,
    /// What the steps printed as findings (stdout only).
    pub stdout: String,
    /// Everything printed, stdout then stderr.
    pub text: String,
}

impl GateRun {
    pub fn assert_passed(&self) {
        assert!(self.passed, "gate should pass, but failed:\n{}", self.text);
    }

    pub fn assert_failed_mentioning(&self, needles: &[&str]) {
        assert!(!self.passed, "gate should fail, but passed:\n{}", self.text);
        for needle in needles {
            assert!(
                self.text.contains(needle),
                "gate output does not mention {needle:?}:\n{}",
                self.text
            );
        }
    }

    /// The `file:line: rule: message` lines the steps printed.
    pub fn findings(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|line| line.contains(": ") && !line.starts_with("=="))
            .collect()
    }
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "expected exactly one {from:?}"
    );
    text.replacen(from, to, 1)
}
