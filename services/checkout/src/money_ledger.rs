//! Checkout's names in the tenant's money ledger, shared by the orders that post to it and the
//! reconciliation that checks it. Every name starts with `checkout:` because the tenant's ledger
//! is shared with loyalty's points.

/// The account for `what` in `currency`: `psp` (what the PSP holds for the merchant: captured
/// minus refunded) or `revenue`.
pub(crate) fn account(what: &str, currency: &str) -> String {
    format!("checkout:{what}:{currency}")
}

/// The entry posting an order's capture.
pub(crate) fn capture_entry(order_id: &str) -> String {
    format!("checkout:capture:{order_id}")
}

/// The entry posting a refund.
pub(crate) fn refund_entry(refund_id: &str) -> String {
    format!("checkout:refund:{refund_id}")
}
