//! Acknowledged behavioural breaks: the reviewed file (`proto/BREAKING-ACCEPTED.toml`) whose
//! entries each let exactly one finding pass until their expiry.
//!
//! An entry names the element, the rule and the change exactly as the finding prints them, so a
//! second, different change of the same element is not covered. An entry that matches no finding
//! (the change was reverted, or released in a new baseline) or whose expiry has passed fails the
//! gate: the file never silently grows.

use std::path::Path;

use jiff::civil::Date;
use serde::Deserialize;
use toml::Spanned;

use crate::Violation;
use crate::behaviour::{BEHAVIOUR_RULES, Finding};

/// The rules about the file itself, for `--list-rules`.
pub const ACCEPTED_FILE_RULES: &[(&str, &str)] = &[
    (
        "accepted-entry-stale",
        "every entry of the accepted-breaks file matches exactly one finding; an entry that matches none must be removed",
    ),
    (
        "accepted-entry-expired",
        "an entry of the accepted-breaks file is used only until its `expires` date",
    ),
];

/// Why the accepted-breaks file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AcceptedFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

/// One reviewed acceptance of a behavioural break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedEntry {
    /// Fully-qualified element, as in the finding (`commerce.loyalty.v1.GetBalanceRequest.member_id`).
    pub element: String,
    /// The behavioural rule, e.g. `validation-tightened`.
    pub rule: String,
    /// The change exactly as the finding prints it, e.g. `max_len 64 → 8`.
    pub change: String,
    /// Why breaking callers is acceptable here.
    pub reason: String,
    /// Who reviewed and accepted it.
    pub approved_by: String,
    /// The issue or change that made it, if any.
    pub issue: Option<String>,
    /// The last day the entry is honoured.
    pub expires: Date,
    /// 1-based line of the entry's `[[accepted]]` table.
    pub line: usize,
}

/// The accepted-breaks file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptedFile {
    /// Path as given, used in messages (`proto/BREAKING-ACCEPTED.toml`).
    pub path: String,
    pub entries: Vec<AcceptedEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    accepted: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    element: String,
    rule: String,
    change: String,
    reason: String,
    approved_by: String,
    issue: Option<String>,
    expires: toml::value::Datetime,
}

impl AcceptedFile {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, AcceptedFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AcceptedFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &text)
    }

    /// Parses the file's `text`; `path` is only for messages.
    pub fn parse(path: &str, text: &str) -> Result<Self, AcceptedFileError> {
        let raw: RawFile = toml::from_str(text).map_err(|error| AcceptedFileError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })?;
        let mut entries = Vec::new();
        for spanned in raw.accepted {
            let line = text[..spanned.span().start.min(text.len())]
                .matches('\n')
                .count()
                + 1;
            let invalid = |message: String| AcceptedFileError::Invalid {
                path: path.to_owned(),
                line,
                message,
            };
            let raw = spanned.into_inner();
            for (name, value) in [
                ("element", &raw.element),
                ("rule", &raw.rule),
                ("change", &raw.change),
                ("reason", &raw.reason),
                ("approved_by", &raw.approved_by),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(format!("entry has an empty `{name}`")));
                }
            }
            if !BEHAVIOUR_RULES.iter().any(|(rule, _)| *rule == raw.rule) {
                return Err(invalid(format!(
                    "entry names rule {:?}, which is not a behavioural rule (see --list-rules)",
                    raw.rule
                )));
            }
            let expires = match (raw.expires.date, raw.expires.time) {
                (Some(date), None) => Date::new(
                    i16::try_from(date.year).unwrap_or(i16::MAX),
                    i8::try_from(date.month).unwrap_or(i8::MAX),
                    i8::try_from(date.day).unwrap_or(i8::MAX),
                )
                .map_err(|error| invalid(format!("`expires` is not a date: {error}")))?,
                _ => {
                    return Err(invalid(
                        "`expires` must be a plain date such as 2026-06-30".to_owned(),
                    ));
                }
            };
            entries.push(AcceptedEntry {
                element: raw.element,
                rule: raw.rule,
                change: raw.change,
                reason: raw.reason,
                approved_by: raw.approved_by,
                issue: raw.issue,
                expires,
                line,
            });
        }
        Ok(AcceptedFile {
            path: path.to_owned(),
            entries,
        })
    }

    /// Splits `findings` into accepted and refused ones and reports every stale or expired entry.
    pub fn settle(&self, findings: Vec<Finding>, today: Date) -> Settlement {
        let mut open: Vec<Option<Finding>> = findings.into_iter().map(Some).collect();
        let mut settlement = Settlement::default();
        for entry in &self.entries {
            if today > entry.expires {
                settlement.entry_problems.push(self.problem(
                    entry,
                    "accepted-entry-expired",
                    format!(
                        "the acceptance of {} {} {:?} expired on {}; fix the contract, or review the entry again with a new expiry",
                        entry.element, entry.rule, entry.change, entry.expires
                    ),
                ));
                continue;
            }
            let matched = open.iter_mut().find(|finding| {
                finding.as_ref().is_some_and(|finding| {
                    finding.element == entry.element
                        && finding.rule == entry.rule
                        && finding.change == entry.change
                })
            });
            match matched.and_then(Option::take) {
                Some(finding) => settlement.accepted.push(finding),
                None => settlement.entry_problems.push(self.problem(
                    entry,
                    "accepted-entry-stale",
                    format!(
                        "no finding {} {} {:?} to accept; remove the entry",
                        entry.element, entry.rule, entry.change
                    ),
                )),
            }
        }
        settlement.refused = open.into_iter().flatten().collect();
        settlement
    }

    fn problem(&self, entry: &AcceptedEntry, rule: &'static str, message: String) -> Violation {
        Violation {
            file: self.path.clone(),
            line: entry.line,
            rule,
            message,
        }
    }
}

/// The outcome of holding the findings against the accepted-breaks file.
#[derive(Debug, Default)]
pub struct Settlement {
    /// Findings no entry accepts: they fail the gate.
    pub refused: Vec<Finding>,
    /// Findings an entry accepts.
    pub accepted: Vec<Finding>,
    /// Stale and expired entries: they fail the gate too.
    pub entry_problems: Vec<Violation>,
}

impl Settlement {
    pub fn passed(&self) -> bool {
        self.refused.is_empty() && self.entry_problems.is_empty()
    }
}

/// A ready-to-review entry accepting `finding` (reason, approver and expiry left to fill in).
pub fn entry_template(finding: &Finding) -> String {
    format!(
        "[[accepted]]\nelement = {:?}\nrule = {:?}\nchange = {:?}\nreason = \"\"\napproved_by = \"\"\nissue = \"\"\nexpires = YYYY-MM-DD\n",
        finding.element, finding.rule, finding.change
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(change: &str) -> Finding {
        Finding {
            file: "commerce/loyalty/v1/member_service.proto".into(),
            line: 134,
            rule: "validation-tightened",
            element: "commerce.loyalty.v1.GetBalanceRequest.member_id".into(),
            change: change.into(),
            short_name: "GetBalanceRequest.member_id".into(),
        }
    }

    const ENTRY: &str = r#"
# Reviewed exceptions.
[[accepted]]
element = "commerce.loyalty.v1.GetBalanceRequest.member_id"
rule = "validation-tightened"
change = "max_len 64 → 8"
reason = "member ids were always 8 characters"
approved_by = "api-review"
expires = 2026-06-30
"#;

    fn day(text: &str) -> Date {
        text.parse().expect("date")
    }

    #[test]
    fn an_empty_file_accepts_nothing() {
        let file = AcceptedFile::parse("accepted.toml", "# nothing accepted\n").expect("parse");
        let settlement = file.settle(vec![finding("max_len 64 → 8")], day("2026-01-01"));
        assert_eq!(settlement.refused.len(), 1);
        assert!(settlement.entry_problems.is_empty());
    }

    #[test]
    fn an_entry_accepts_exactly_its_change() {
        let file = AcceptedFile::parse("accepted.toml", ENTRY).expect("parse");
        assert_eq!(file.entries[0].line, 3);
        let settlement = file.settle(
            vec![finding("max_len 64 → 8"), finding("min_len unset → 1")],
            day("2026-06-30"),
        );
        assert_eq!(settlement.accepted, [finding("max_len 64 → 8")]);
        assert_eq!(settlement.refused, [finding("min_len unset → 1")]);
        assert!(!settlement.passed());
    }

    #[test]
    fn an_entry_that_matches_nothing_is_stale() {
        let file = AcceptedFile::parse("accepted.toml", ENTRY).expect("parse");
        let settlement = file.settle(vec![finding("max_len 64 → 4")], day("2026-01-01"));
        let rules: Vec<&str> = settlement.entry_problems.iter().map(|v| v.rule).collect();
        assert_eq!(rules, ["accepted-entry-stale"]);
        assert_eq!(settlement.entry_problems[0].line, 3);
    }

    #[test]
    fn an_expired_entry_fails_and_accepts_nothing() {
        let file = AcceptedFile::parse("accepted.toml", ENTRY).expect("parse");
        let settlement = file.settle(vec![finding("max_len 64 → 8")], day("2026-07-01"));
        let rules: Vec<&str> = settlement.entry_problems.iter().map(|v| v.rule).collect();
        assert_eq!(rules, ["accepted-entry-expired"]);
        assert_eq!(settlement.refused.len(), 1);
    }

    #[test]
    fn two_entries_for_one_finding_leave_one_stale() {
        let file = AcceptedFile::parse("accepted.toml", &format!("{ENTRY}{ENTRY}")).expect("parse");
        let settlement = file.settle(vec![finding("max_len 64 → 8")], day("2026-01-01"));
        assert_eq!(settlement.accepted.len(), 1);
        assert_eq!(settlement.entry_problems.len(), 1);
    }

    #[test]
    fn entries_must_be_complete_and_name_a_behavioural_rule() {
        let no_reason = ENTRY.replace("member ids were always 8 characters", " ");
        assert!(matches!(
            AcceptedFile::parse("accepted.toml", &no_reason),
            Err(AcceptedFileError::Invalid { line: 3, .. })
        ));
        let unknown_rule = ENTRY.replace("validation-tightened", "money-uses-money");
        assert!(AcceptedFile::parse("accepted.toml", &unknown_rule).is_err());
        let timestamp = ENTRY.replace("2026-06-30", "2026-06-30T10:00:00Z");
        assert!(AcceptedFile::parse("accepted.toml", &timestamp).is_err());
        let unknown_key = ENTRY.replace("expires", "ticket = \"x\"\nexpires");
        assert!(AcceptedFile::parse("accepted.toml", &unknown_key).is_err());
    }
}
