//! Deprecation schedules: when a deprecated element may be removed.
//!
//! An RPC states its schedule in `(commerce.api.v1.rpc).deprecation` (`removal_version`,
//! `sunset_date`); other elements in their comment, as the deprecation playbook asks:
//! `// Deprecated: use X; removal in v2, sunset 2027-06-30.` An element may be removed once every
//! condition it states has passed: the package it is removed from is at `removal_version` or
//! later, and today is after `sunset_date`. A deprecation that states neither never passes.

use std::cmp::Ordering;
use std::sync::LazyLock;

use jiff::civil::Date;
use regex::Regex;

static REMOVAL_IN_COMMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bremoval(?:_version)?(?:\s+in)?[:\s]+(v\d+(?:(?:alpha|beta)\d+)?)\b")
        .expect("valid regex")
});
static SUNSET_IN_COMMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\bsunset(?:_date)?(?:\s+on)?[:\s]+(\d{4}-\d{2}-\d{2})\b").expect("valid regex")
});

/// When a deprecated element may go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub removal_version: Option<String>,
    pub sunset_date: Option<String>,
}

impl Schedule {
    /// From an RPC's `Deprecation` option fields (empty strings are unset).
    pub fn declared(removal_version: String, sunset_date: String) -> Self {
        Schedule {
            removal_version: Some(removal_version).filter(|value| !value.is_empty()),
            sunset_date: Some(sunset_date).filter(|value| !value.is_empty()),
        }
    }

    /// From a deprecated element's comment (`removal in v2`, `sunset 2027-06-30`).
    pub fn from_comment(comment: &str) -> Self {
        let capture = |pattern: &Regex| {
            pattern
                .captures(comment)
                .and_then(|captures| captures.get(1))
                .map(|found| found.as_str().to_owned())
        };
        Schedule {
            removal_version: capture(&REMOVAL_IN_COMMENT),
            sunset_date: capture(&SUNSET_IN_COMMENT),
        }
    }

    /// `(removal_version v2, sunset_date 2027-06-30)`, the schedule as a finding names it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(version) = &self.removal_version {
            parts.push(format!("removal_version {version}"));
        }
        if let Some(date) = &self.sunset_date {
            parts.push(format!("sunset_date {date}"));
        }
        if parts.is_empty() {
            "no removal_version or sunset_date".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Whether an element of `package` with this schedule may be removed on `today`.
    pub fn has_passed(&self, package: &str, today: Date) -> bool {
        if self.removal_version.is_none() && self.sunset_date.is_none() {
            return false;
        }
        let version_passed = self.removal_version.as_ref().is_none_or(|removal| {
            match (
                PackageVersion::of_package(package),
                PackageVersion::parse(removal),
            ) {
                (Some(current), Some(removal)) => current.cmp(&removal) != Ordering::Less,
                _ => false,
            }
        });
        let sunset_passed = self.sunset_date.as_ref().is_none_or(|sunset| {
            sunset
                .parse::<Date>()
                .is_ok_and(|sunset_date| today > sunset_date)
        });
        version_passed && sunset_passed
    }
}

/// A package version, `v1alpha1` < `v1beta1` < `v1` < `v2alpha1` < `v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PackageVersion {
    major: u32,
    /// 0 alpha, 1 beta, 2 stable.
    stability: u8,
    pre_release: u32,
}

impl PackageVersion {
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major = rest[..digits].parse().ok()?;
        let suffix = &rest[digits..];
        let (stability, pre_release) = if suffix.is_empty() {
            (2, 0)
        } else if let Some(number) = suffix.strip_prefix("beta") {
            (1, number.parse().ok()?)
        } else if let Some(number) = suffix.strip_prefix("alpha") {
            (0, number.parse().ok()?)
        } else {
            return None;
        };
        Some(PackageVersion {
            major,
            stability,
            pre_release,
        })
    }

    /// The version a package name ends in (`commerce.checkout.v1` → `v1`).
    pub fn of_package(package: &str) -> Option<Self> {
        Self::parse(package.rsplit('.').next()?)
    }

    pub fn is_stable(self) -> bool {
        self.stability == 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> Date {
        text.parse().expect("date")
    }

    #[test]
    fn package_versions_order_alpha_beta_stable_then_major() {
        let order = ["v1alpha1", "v1beta1", "v1beta2", "v1", "v2alpha1", "v2"];
        let parsed: Vec<PackageVersion> = order
            .iter()
            .map(|text| PackageVersion::parse(text).expect(text))
            .collect();
        assert!(parsed.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(PackageVersion::parse("soon").is_none());
        assert!(PackageVersion::parse("v1gamma1").is_none());
    }

    #[test]
    fn a_sunset_passes_the_day_after_it() {
        let schedule = Schedule::declared(String::new(), "2027-06-30".into());
        assert!(!schedule.has_passed("commerce.checkout.v1", day("2027-06-30")));
        assert!(schedule.has_passed("commerce.checkout.v1", day("2027-07-01")));
    }

    #[test]
    fn a_removal_version_beyond_the_package_never_passes_inside_it() {
        let schedule = Schedule::declared("v2".into(), "2020-01-01".into());
        assert!(!schedule.has_passed("commerce.checkout.v1", day("2030-01-01")));
        let schedule = Schedule::declared("v1".into(), "2020-01-01".into());
        assert!(schedule.has_passed("commerce.checkout.v1", day("2030-01-01")));
    }

    #[test]
    fn a_deprecation_without_schedule_never_passes() {
        assert!(!Schedule::default().has_passed("commerce.checkout.v1", day("2100-01-01")));
    }

    #[test]
    fn comments_state_removal_version_and_sunset() {
        let schedule = Schedule::from_comment(
            " Deprecated: use pickup_time; removal in v2, sunset 2027-06-30.\n",
        );
        assert_eq!(schedule.removal_version.as_deref(), Some("v2"));
        assert_eq!(schedule.sunset_date.as_deref(), Some("2027-06-30"));
        assert_eq!(
            Schedule::from_comment("Deprecated: use x."),
            Schedule::default()
        );
    }
}
