//! The house policy check for protobuf contracts: reads a descriptor set (with source info) and
//! reports every breach of the rules `buf lint` cannot express, as `file:line: rule: message`.
//!
//! It checks only files whose package starts with `commerce.`; imports (well-known types,
//! `buf/validate`) are not ours to judge. It knows the rules, not the services: the same binary
//! checks any version of the contracts.
//!
//! Besides the house rules over one image ([`check`]), it compares the working tree's image with
//! the released one for behavioural breaks `buf breaking` cannot see ([`behaviour::compare`]):
//! tightened validation, stricter RPC policy, events and early removals of deprecated elements.
//! Intended breaks pass only through a reviewed entry of an [`AcceptedFile`].

mod accepted;
pub mod behaviour;
mod options;
mod rules;
mod source;

pub use accepted::{
    ACCEPTED_FILE_RULES, AcceptedEntry, AcceptedFile, AcceptedFileError, Settlement, entry_template,
};
pub use behaviour::{BEHAVIOUR_RULES, Finding};
pub use rules::{RULES, check};

use std::fmt;

/// One breach of a house rule, located in the `.proto` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the file, as the compiler saw it (e.g. `commerce/checkout/v1/order_service.proto`).
    pub file: String,
    /// 1-based line of the element, or 0 when the descriptor carries no source info.
    pub line: usize,
    /// Stable rule name (one of [`RULES`]).
    pub rule: &'static str,
    /// What is wrong, naming the element.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.rule, self.message
        )
    }
}
