//! The tax hook port: how checkout learns the tax of each cart line.
//!
//! Pricing allocates discounts first ([`crate::pricing::allocate`]); the engine then asks a
//! [`TaxHook`] for the tax of every line's amount after discounts ([`TaxRequest::for_allocation`]),
//! always through [`tax_with_deadline`], and hands the answer to [`crate::pricing::finish`]
//! ([`TaxResponse::into_tax_source`]).
//!
//! A slow or failing hook fails the quote with a [`TaxError`]; checkout never falls back to an
//! untaxed quote. [`RateTableTax`] is the default hook: the location's `TaxRate`s with the same
//! per-line half-up rule as pricing ([`crate::pricing::line_tax`]), so a quote taxed by it equals
//! one priced with [`crate::pricing::TaxSource::Rates`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use commerce_api::commerce::checkout::v1::TaxRate;

use crate::pricing::{self, Allocated, TaxSource};

/// Why a cart's tax could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaxError {
    /// The hook did not answer in time.
    #[error("tax hook did not answer within {0:?}")]
    Timeout(Duration),
    /// The hook failed (its own reason).
    #[error("tax hook failed: {0}")]
    Failed(String),
    /// The request or the hook's answer breaks the port's rules (a line missing, repeated or
    /// unknown, a negative tax, a rate out of range, an overflow).
    #[error("invalid tax exchange: {0}")]
    Invalid(String),
}

/// What a tax hook is asked: the tax of each line of one cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxRequest {
    /// The location the order is placed at (decides the jurisdiction).
    pub location_id: String,
    /// ISO-4217 code of every amount.
    pub currency_code: String,
    /// The lines to tax, in cart order.
    pub lines: Vec<TaxableLine>,
}

impl TaxRequest {
    /// The request for an allocated cart at `location_id`.
    pub fn for_allocation(location_id: impl Into<String>, allocated: &Allocated) -> Self {
        TaxRequest {
            location_id: location_id.into(),
            currency_code: allocated.currency_code().to_owned(),
            lines: allocated
                .lines()
                .iter()
                .map(|line| TaxableLine {
                    line_id: line.line.line_id.clone(),
                    tax_category: line.line.tax_category.clone(),
                    taxable_minor: line.taxable_minor(),
                })
                .collect(),
        }
    }
}

/// One line to tax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxableLine {
    /// The cart line id.
    pub line_id: String,
    /// The item's tax category, e.g. `prepared_food`.
    pub tax_category: String,
    /// The amount to tax: line subtotal less its discounts (non-negative).
    pub taxable_minor: i64,
}

/// A hook's answer: the tax of every requested line, each exactly once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxResponse {
    /// Tax per line.
    pub lines: Vec<LineTax>,
}

impl TaxResponse {
    /// The answer as pricing's per-line tax source. Check it with [`tax_with_deadline`] first: a
    /// repeated line id keeps only its last amount here.
    pub fn into_tax_source(self) -> TaxSource {
        TaxSource::PerLine(
            self.lines
                .into_iter()
                .map(|line| (line.line_id, line.tax_minor))
                .collect(),
        )
    }
}

/// The tax of one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTax {
    /// The cart line id.
    pub line_id: String,
    /// Tax in minor units (non-negative).
    pub tax_minor: i64,
}

/// The tax hook port.
#[async_trait]
pub trait TaxHook: Send + Sync {
    /// The tax of every line of `request`.
    async fn tax(&self, request: &TaxRequest) -> Result<TaxResponse, TaxError>;
}

/// The default hook: one location's `TaxRate`s, tax per line rounded half up; a category without
/// a rate is untaxed. Built per location, so it does not look at `request.location_id`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateTableTax {
    rates_ppm: BTreeMap<String, i64>,
}

impl RateTableTax {
    /// From a location's `tax_rates`. A category listed twice keeps its last rate.
    pub fn new(rates: &[TaxRate]) -> Self {
        RateTableTax {
            rates_ppm: pricing::rate_table(rates),
        }
    }
}

#[async_trait]
impl TaxHook for RateTableTax {
    async fn tax(&self, request: &TaxRequest) -> Result<TaxResponse, TaxError> {
        let lines = request
            .lines
            .iter()
            .map(|line| {
                let tax_minor = match self.rates_ppm.get(&line.tax_category) {
                    Some(rate) => pricing::line_tax(line.taxable_minor, *rate)
                        .map_err(|error| TaxError::Invalid(format!("{}: {error}", line.line_id)))?,
                    None => 0,
                };
                Ok(LineTax {
                    line_id: line.line_id.clone(),
                    tax_minor,
                })
            })
            .collect::<Result<_, TaxError>>()?;
        Ok(TaxResponse { lines })
    }
}

/// Asks `hook`, failing with [`TaxError::Timeout`] if it does not answer within `timeout`, and
/// with [`TaxError::Invalid`] unless the answer covers every requested line exactly once, names no
/// other line, and has no negative tax. The hook's own errors pass through unchanged.
pub async fn tax_with_deadline(
    hook: &dyn TaxHook,
    request: &TaxRequest,
    timeout: Duration,
) -> Result<TaxResponse, TaxError> {
    use tracing::Instrument as _;
    // The hook is an outbound call: a CLIENT span under the quote that asked.
    let span = platform::telemetry::attempt_span("tax", "tax", "tax_hook", 1, false);
    let answer = async {
        let response = tokio::time::timeout(timeout, hook.tax(request))
            .await
            .map_err(|_| TaxError::Timeout(timeout))??;
        check_covers_request(request, &response)?;
        Ok(response)
    }
    .instrument(span.clone())
    .await;
    if let Err(error) = &answer {
        platform::telemetry::mark_failed(&span, error);
    }
    answer
}

fn check_covers_request(request: &TaxRequest, response: &TaxResponse) -> Result<(), TaxError> {
    let requested: BTreeSet<&str> = request.lines.iter().map(|l| l.line_id.as_str()).collect();
    let mut answered = BTreeSet::new();
    for line in &response.lines {
        if !requested.contains(line.line_id.as_str()) {
            return Err(TaxError::Invalid(format!(
                "answer names line {} that was not asked about",
                line.line_id
            )));
        }
        if !answered.insert(line.line_id.as_str()) {
            return Err(TaxError::Invalid(format!(
                "answer names line {} twice",
                line.line_id
            )));
        }
        if line.tax_minor < 0 {
            return Err(TaxError::Invalid(format!(
                "answer gives line {} a negative tax",
                line.line_id
            )));
        }
    }
    if let Some(missing) = requested.difference(&answered).next() {
        return Err(TaxError::Invalid(format!(
            "answer has no tax for line {missing}"
        )));
    }
    Ok(())
}
