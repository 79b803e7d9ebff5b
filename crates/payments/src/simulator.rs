//! An in-memory PSP that keeps the port's promises and misbehaves on request.
//!
//! Behaviour is picked by payment token (the grammar is in the [module documentation](super)) or
//! programmed per token with [`PspSimulator::configure`] / [`PspSimulator::configure_for`].
//!
//! Everything a call does is decided and recorded atomically when the call arrives; latency and
//! timeouts only delay the *reply*. So a caller that gives up while waiting is in the same
//! position as one whose reply was lost — exactly the case the saga must handle.
//!
//! [`PspSimulator::new`] keeps everything in memory (tests, benchmarks); [`PspSimulator::durable`]
//! also writes every recorded call to a store before replying and reads them back at start
//! ([`crate::durable`]), so a restarted process answers lookups, replays and refunds of what it
//! did before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::durable::{self, Request, StateError, StoredCall};
use super::{
    AuthorizeRequest, CaptureRequest, PaymentProvider, PspError, RefundRequest, Transaction,
    TransactionKind, TransactionStatus, VoidRequest, looks_like_card_number,
};

/// How long `tok_timeout` and `tok_reply_lost` keep the caller waiting before replying
/// [`PspError::Timeout`], unless changed with [`PspSimulator::set_timeout_delay`].
pub const DEFAULT_TIMEOUT_DELAY: Duration = Duration::from_secs(3);

/// Decline codes that mean "do not retry"; every other decline code is soft.
pub const HARD_DECLINE_CODES: &[&str] = &[
    "stolen_card",
    "lost_card",
    "pickup_card",
    "fraudulent",
    "expired_card",
    "incorrect_number",
    "restricted_card",
    "card_not_supported",
];

/// Longest idempotency key accepted (Stripe's limit).
pub const MAX_IDEMPOTENCY_KEY_LENGTH: usize = 255;

/// What one call does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acts and replies with the transaction.
    Succeed,
    /// Records a declined transaction and replies [`PspError::Declined`].
    Decline {
        /// The decline code.
        code: String,
        /// Do not retry.
        hard: bool,
    },
    /// Does nothing; replies [`PspError::Timeout`] after the timeout delay.
    Timeout,
    /// Acts like [`Outcome::Succeed`] but replies [`PspError::Timeout`] after the timeout delay.
    ReplyLost,
    /// Does nothing; replies [`PspError::Unavailable`].
    Unavailable,
}

/// A token's programmed behaviour: the first `fail_first` calls have outcome `failure`, the rest
/// `outcome`; every reply comes `latency` later (on top of the global latency).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// What calls do once the failures are used up.
    pub outcome: Outcome,
    /// Extra time before each reply.
    pub latency: Duration,
    /// How many calls (per token and operation; idempotent replays do not count) fail first.
    pub fail_first: u32,
    /// What those first calls do.
    pub failure: Outcome,
}

impl Behaviour {
    /// Calls have `outcome`, no extra latency, no initial failures.
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            latency: Duration::ZERO,
            fail_first: 0,
            failure: Outcome::Unavailable,
        }
    }

    /// Every call succeeds.
    pub fn succeed() -> Self {
        Self::new(Outcome::Succeed)
    }

    /// Every call is declined with `code`.
    pub fn decline(code: impl Into<String>, hard: bool) -> Self {
        Self::new(Outcome::Decline {
            code: code.into(),
            hard,
        })
    }

    /// Each reply comes `latency` later.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The first `calls` calls have outcome `failure` (e.g. [`Outcome::Unavailable`]) instead.
    pub fn after_failures(mut self, calls: u32, failure: Outcome) -> Self {
        self.fail_first = calls;
        self.failure = failure;
        self
    }

    /// The behaviour the token grammar gives `token`, if it is in the grammar.
    pub fn from_token(token: &str) -> Option<Self> {
        let rest = token.strip_prefix("tok_")?;
        let outcome = match rest {
            "ok" => Outcome::Succeed,
            "timeout" => Outcome::Timeout,
            "reply_lost" => Outcome::ReplyLost,
            "unavailable" => Outcome::Unavailable,
            _ => {
                if let Some(code) = rest.strip_prefix("decline_").filter(|c| !c.is_empty()) {
                    let hard = HARD_DECLINE_CODES.contains(&code);
                    return Some(Self::decline(code, hard));
                }
                let milliseconds = rest.strip_prefix("latency_")?.parse::<u64>().ok()?;
                return Some(Self::succeed().with_latency(Duration::from_millis(milliseconds)));
            }
        };
        Some(Self::new(outcome))
    }
}

/// The simulated PSP. Cheap to clone; clones share one ledger and one configuration.
#[derive(Clone, Default)]
pub struct PspSimulator {
    state: Arc<Mutex<State>>,
    /// Where recorded calls are kept across restarts; `None` keeps them in memory only.
    store: Option<Arc<dyn store::Store>>,
}

#[derive(Default)]
struct State {
    /// The ledger, in the order recorded.
    ledger: Vec<Transaction>,
    /// Ledger position by transaction id.
    positions: HashMap<String, usize>,
    /// Ledger positions of each transaction's children (captures, voids, refunds), by parent id.
    children: HashMap<String, Vec<usize>>,
    /// What each consumed idempotency key was used for.
    keys: HashMap<String, KeyRecord>,
    /// The payment token behind each authorisation, so children follow its behaviour.
    tokens: HashMap<String, String>,
    /// Programmed behaviour by token, for every operation (`None`) or one.
    behaviours: HashMap<(String, Option<TransactionKind>), Behaviour>,
    /// Calls that reached the behaviour table, per token and operation.
    calls: HashMap<(String, TransactionKind), u32>,
    latency: Duration,
    timeout_delay: Option<Duration>,
    failing_reads: u32,
    /// Whether recorded calls must be written to the store before their reply.
    persistent: bool,
    /// The next recorded call's position in the order of recording.
    next_sequence: u64,
}

struct KeyRecord {
    request: Request,
    transaction: usize,
    sequence: u64,
    /// True once the call is in the store (always, in memory). Its lock is held while the first
    /// write is under way, so a replay or lookup of the key waits for it — nothing is answered
    /// about a call before it is durable.
    stored: Arc<tokio::sync::Mutex<bool>>,
}

/// What to reply, and after how long.
struct Reply {
    delay: Duration,
    result: Result<Transaction, PspError>,
    durability: Durability,
}

/// What must be durable before the reply goes out.
enum Durability {
    /// Nothing new (a refusal, an in-memory simulator).
    Nothing,
    /// The call was just recorded: write it (its lock, held, keeps replays waiting).
    Write(tokio::sync::OwnedMutexGuard<bool>, StoredCall),
    /// A replay or lookup of a recorded call: make sure its first write happened.
    Await(Arc<tokio::sync::Mutex<bool>>, StoredCall),
}

impl PspSimulator {
    /// An empty PSP: no transactions, nothing programmed, no latency; it forgets everything
    /// when dropped.
    pub fn new() -> Self {
        Self::default()
    }

    /// A PSP whose transactions, consumed idempotency keys (with the request each was used for)
    /// and authorisations' tokens live in `store` (see [`crate::durable`]): what it recorded
    /// there before — by this process or one before it — is loaded now, and every call it
    /// records from now on is written there before its reply is sent.
    pub async fn durable(store: Arc<dyn store::Store>) -> Result<Self, StateError> {
        let mut state = State {
            persistent: true,
            ..State::default()
        };
        for (call, request, transaction) in durable::read_all(store.as_ref()).await? {
            state.restore(call.sequence, request, transaction);
        }
        Ok(Self {
            state: Arc::new(Mutex::new(state)),
            store: Some(store),
        })
    }

    /// Programs `token` for every operation not programmed separately with
    /// [`configure_for`](Self::configure_for), replacing earlier `configure` of it and restarting
    /// its failure counts. Takes precedence over the token grammar.
    pub fn configure(&self, token: impl Into<String>, behaviour: Behaviour) {
        let token = token.into();
        let mut state = self.lock();
        state.calls.retain(|(counted, _), _| *counted != token);
        state.behaviours.insert((token, None), behaviour);
    }

    /// Programs `token` for one operation only (e.g. captures of its authorisations), over
    /// whatever [`configure`](Self::configure) or the grammar says; restarts that operation's
    /// failure count.
    pub fn configure_for(
        &self,
        token: impl Into<String>,
        operation: TransactionKind,
        behaviour: Behaviour,
    ) {
        let token = token.into();
        let mut state = self.lock();
        state.calls.remove(&(token.clone(), operation));
        state.behaviours.insert((token, Some(operation)), behaviour);
    }

    /// Latency added to every reply, including lookups and idempotent replays. 0 by default.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// How long timing-out calls keep the caller waiting; [`DEFAULT_TIMEOUT_DELAY`] by default.
    pub fn set_timeout_delay(&self, delay: Duration) {
        self.lock().timeout_delay = Some(delay);
    }

    /// The next `calls` calls to `lookup` or `transactions` reply [`PspError::Unavailable`].
    pub fn fail_reads(&self, calls: u32) {
        self.lock().failing_reads = calls;
    }

    /// How many authorisations succeeded for `reference` — holds actually placed, whatever the
    /// callers saw. The number a "charged once" test asserts on.
    pub fn authorization_count(&self, reference: &str) -> usize {
        self.lock()
            .ledger
            .iter()
            .filter(|t| {
                t.kind == TransactionKind::Authorization
                    && t.reference == reference
                    && t.succeeded()
            })
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock except a bug; keep serving the ledger anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn call(&self, request: Request) -> Result<Transaction, PspError> {
        let reply = self.lock().decide(request);
        let result = match self.make_durable(reply.durability).await {
            Ok(()) => reply.result,
            Err(error) => {
                // Recorded here but maybe not in the store: the outcome is unknown to the
                // caller, who retries with the same key (the retry writes it again) or looks
                // it up.
                tracing::warn!(%error, "payments: the PSP simulator could not store a call");
                Err(PspError::Timeout)
            }
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        result
    }

    /// Writes what `durability` asks for, or waits for the first write of it.
    async fn make_durable(&self, durability: Durability) -> Result<(), store::StoreError> {
        let Some(store) = self.store.as_deref() else {
            return Ok(());
        };
        match durability {
            Durability::Nothing => Ok(()),
            Durability::Write(mut stored, call) => {
                durable::write(store, &call).await?;
                *stored = true;
                Ok(())
            }
            Durability::Await(stored, call) => {
                let mut stored = stored.lock().await;
                if !*stored {
                    // Its first write failed: write it now.
                    durable::write(store, &call).await?;
                    *stored = true;
                }
                Ok(())
            }
        }
    }

    async fn read<T>(&self, read: impl FnOnce(&State) -> T) -> Result<T, PspError> {
        let (latency, result) = {
            let mut state = self.lock();
            let result = if state.failing_reads > 0 {
                state.failing_reads -= 1;
                Err(PspError::Unavailable)
            } else {
                Ok(read(&state))
            };
            (state.latency, result)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        result
    }
}

impl State {
    /// Everything a call does, atomically: validate, replay or refuse a used key, apply the
    /// token's behaviour and the money rules, record.
    fn decide(&mut self, request: Request) -> Reply {
        let latency = self.latency;
        let immediate = |result| Reply {
            delay: latency,
            result,
            durability: Durability::Nothing,
        };
        if let Request::Authorize(authorize) = &request
            && looks_like_card_number(&authorize.payment_token)
        {
            return immediate(Err(PspError::CardDataRejected));
        }
        if let Err(error) = validate(&request) {
            return immediate(Err(error));
        }
        if let Some(record) = self.keys.get(request.idempotency_key()) {
            if record.request != request {
                return immediate(Err(PspError::IdempotencyKeyReused));
            }
            return Reply {
                delay: latency,
                result: outcome_of(&self.ledger[record.transaction]),
                durability: self.durability_of(record),
            };
        }

        let (token, parent) = match self.token_and_parent(&request) {
            Ok(found) => found,
            Err(error) => return immediate(Err(error)),
        };
        let Some(behaviour) = self.behaviour(&token, request.kind()) else {
            return immediate(Err(PspError::InvalidRequest(format!(
                "unknown payment token {token:?}; the simulator accepts tok_ok, \
                 tok_decline_<code>, tok_latency_<ms>, tok_timeout, tok_reply_lost, \
                 tok_unavailable and configured tokens"
            ))));
        };
        let calls = self
            .calls
            .entry((token.clone(), request.kind()))
            .or_default();
        *calls += 1;
        let outcome = if *calls <= behaviour.fail_first {
            behaviour.failure
        } else {
            behaviour.outcome
        };
        let delay = self.latency + behaviour.latency;
        let timeout_delay = delay + self.timeout_delay.unwrap_or(DEFAULT_TIMEOUT_DELAY);
        let reply = |delay, result| Reply {
            delay,
            result,
            durability: Durability::Nothing,
        };

        match outcome {
            Outcome::Unavailable => return reply(delay, Err(PspError::Unavailable)),
            Outcome::Timeout => return reply(timeout_delay, Err(PspError::Timeout)),
            _ => {}
        }
        if let Err(error) = self.check_rules(&request, parent.as_ref()) {
            return reply(delay, Err(error));
        }
        let status = match &outcome {
            Outcome::Decline { code, hard } => TransactionStatus::Declined {
                code: code.clone(),
                hard: *hard,
            },
            _ => TransactionStatus::Succeeded,
        };
        let (transaction, durability) = self.record(request, parent.as_ref(), status, token);
        let (delay, result) = match outcome {
            Outcome::ReplyLost => (timeout_delay, Err(PspError::Timeout)),
            _ => (delay, outcome_of(&transaction)),
        };
        Reply {
            delay,
            result,
            durability,
        }
    }

    /// What a replay (or lookup) of `record` must wait for before answering.
    fn durability_of(&self, record: &KeyRecord) -> Durability {
        if !self.persistent {
            return Durability::Nothing;
        }
        let call = StoredCall::new(
            record.sequence,
            &record.request,
            &self.ledger[record.transaction],
        );
        Durability::Await(record.stored.clone(), call)
    }

    /// The token whose behaviour applies, and the transaction the request acts on.
    fn token_and_parent(
        &self,
        request: &Request,
    ) -> Result<(String, Option<Transaction>), PspError> {
        let (parent_id, parent_kind) = match request {
            Request::Authorize(authorize) => return Ok((authorize.payment_token.clone(), None)),
            Request::Capture(capture) => {
                (&capture.authorization_id, TransactionKind::Authorization)
            }
            Request::Void(void) => (&void.authorization_id, TransactionKind::Authorization),
            Request::Refund(refund) => (&refund.capture_id, TransactionKind::Capture),
        };
        let parent = self
            .positions
            .get(parent_id)
            .map(|&position| &self.ledger[position])
            .filter(|parent| parent.kind == parent_kind)
            .ok_or(PspError::NotFound)?;
        let authorization_id = match parent_kind {
            TransactionKind::Capture => parent.parent_id.as_ref().ok_or(PspError::NotFound)?,
            _ => &parent.id,
        };
        let token = self
            .tokens
            .get(authorization_id)
            .ok_or(PspError::NotFound)?
            .clone();
        Ok((token, Some(parent.clone())))
    }

    fn behaviour(&self, token: &str, operation: TransactionKind) -> Option<Behaviour> {
        let programmed = |operation| self.behaviours.get(&(token.to_owned(), operation)).cloned();
        programmed(Some(operation))
            .or_else(|| programmed(None))
            .or_else(|| Behaviour::from_token(token))
    }

    /// The money rules: what state the parent must be in, and how much may move.
    fn check_rules(&self, request: &Request, parent: Option<&Transaction>) -> Result<(), PspError> {
        let Some(parent) = parent else {
            return Ok(());
        };
        if !parent.succeeded() {
            return Err(PspError::InvalidRequest(format!(
                "{} was declined",
                parent.id
            )));
        }
        if let Some(amount) = request.amount()
            && amount.currency_code != parent.amount.currency_code
        {
            return Err(PspError::InvalidRequest(format!(
                "currency {} differs from {}'s {}",
                amount.currency_code, parent.id, parent.amount.currency_code
            )));
        }
        let succeeded_children = |kind| {
            self.children
                .get(&parent.id)
                .into_iter()
                .flatten()
                .map(|&position| &self.ledger[position])
                .filter(move |child| child.kind == kind && child.succeeded())
        };
        match request {
            Request::Authorize(_) => Ok(()),
            Request::Capture(_) | Request::Void(_) => {
                if succeeded_children(TransactionKind::Void).next().is_some() {
                    return Err(PspError::InvalidRequest(format!(
                        "{} was voided",
                        parent.id
                    )));
                }
                if succeeded_children(TransactionKind::Capture)
                    .next()
                    .is_some()
                {
                    return Err(PspError::InvalidRequest(format!(
                        "{} was already captured (one capture per authorisation; refund instead)",
                        parent.id
                    )));
                }
                match request {
                    Request::Capture(capture)
                        if capture.amount.amount_minor > parent.amount.amount_minor =>
                    {
                        Err(PspError::ExceedsAuthorized)
                    }
                    _ => Ok(()),
                }
            }
            Request::Refund(refund) => {
                let refunded: i64 = succeeded_children(TransactionKind::Refund)
                    .map(|child| child.amount.amount_minor)
                    .sum();
                if refund.amount.amount_minor > parent.amount.amount_minor - refunded {
                    Err(PspError::ExceedsCaptured)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Records a transaction for `request`; returns it with what must be stored before the
    /// reply.
    fn record(
        &mut self,
        request: Request,
        parent: Option<&Transaction>,
        status: TransactionStatus,
        token: String,
    ) -> (Transaction, Durability) {
        let kind = request.kind();
        let prefix = match kind {
            TransactionKind::Authorization => "auth",
            TransactionKind::Capture => "cap",
            TransactionKind::Void => "void",
            TransactionKind::Refund => "re",
        };
        let (amount, reference) = match (&request, parent) {
            (Request::Authorize(authorize), _) => {
                (authorize.amount.clone(), authorize.reference.clone())
            }
            (Request::Void(_), Some(parent)) => (parent.amount.clone(), parent.reference.clone()),
            (_, Some(parent)) => (
                request
                    .amount()
                    .cloned()
                    .unwrap_or_else(|| parent.amount.clone()),
                parent.reference.clone(),
            ),
            (_, None) => unreachable!("captures, voids and refunds always have a parent"),
        };
        let transaction = Transaction {
            id: format!("{prefix}_{}", Uuid::now_v7().simple()),
            kind,
            status,
            amount,
            reference,
            idempotency_key: request.idempotency_key().to_owned(),
            parent_id: parent.map(|parent| parent.id.clone()),
            created_at_ms: platform::units::unix_now_ms(),
        };
        let sequence = self.next_sequence;
        let (stored, durability) = if self.persistent {
            let stored = Arc::new(tokio::sync::Mutex::new(false));
            let call = StoredCall::new(sequence, &request, &transaction);
            let durability = match stored.clone().try_lock_owned() {
                Ok(writing) => Durability::Write(writing, call),
                // A lock made just now is free; were it not, wait for the write like a replay.
                Err(_) => Durability::Await(stored.clone(), call),
            };
            (stored, durability)
        } else {
            (Arc::new(tokio::sync::Mutex::new(true)), Durability::Nothing)
        };
        self.insert(request, transaction.clone(), sequence, token, stored);
        (transaction, durability)
    }

    /// Puts a recorded call into the ledger and the indexes, in recording order.
    fn insert(
        &mut self,
        request: Request,
        transaction: Transaction,
        sequence: u64,
        token: String,
        stored: Arc<tokio::sync::Mutex<bool>>,
    ) {
        let position = self.ledger.len();
        self.positions.insert(transaction.id.clone(), position);
        if let Some(parent) = &transaction.parent_id {
            self.children
                .entry(parent.clone())
                .or_default()
                .push(position);
        }
        if transaction.kind == TransactionKind::Authorization {
            self.tokens.insert(transaction.id.clone(), token);
        }
        self.keys.insert(
            transaction.idempotency_key.clone(),
            KeyRecord {
                request,
                transaction: position,
                sequence,
                stored,
            },
        );
        self.ledger.push(transaction);
        self.next_sequence = self.next_sequence.max(sequence + 1);
    }

    /// Puts back a call read from the store.
    fn restore(&mut self, sequence: u64, request: Request, transaction: Transaction) {
        let token = match &request {
            Request::Authorize(authorize) => authorize.payment_token.clone(),
            _ => String::new(),
        };
        let stored = Arc::new(tokio::sync::Mutex::new(true));
        self.insert(request, transaction, sequence, token, stored);
    }
}

/// What a call that recorded `transaction` replies (also on every idempotent replay).
fn outcome_of(transaction: &Transaction) -> Result<Transaction, PspError> {
    match &transaction.status {
        TransactionStatus::Succeeded => Ok(transaction.clone()),
        TransactionStatus::Declined { code, hard } => Err(PspError::Declined {
            code: code.clone(),
            hard: *hard,
        }),
    }
}

fn validate(request: &Request) -> Result<(), PspError> {
    let invalid = |message: &str| Err(PspError::InvalidRequest(message.to_owned()));
    let key = request.idempotency_key();
    if key.is_empty() {
        return invalid("an idempotency key is required");
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LENGTH {
        return invalid("the idempotency key is longer than 255 characters");
    }
    if let Some(amount) = request.amount() {
        let currency = amount.currency_code.as_bytes();
        if currency.len() != 3 || !currency.iter().all(u8::is_ascii_uppercase) {
            return invalid("the currency code must be three upper-case letters (ISO 4217)");
        }
        if amount.amount_minor <= 0 {
            return invalid("the amount must be positive");
        }
    }
    match request {
        Request::Authorize(authorize) if authorize.payment_token.is_empty() => {
            invalid("a payment token is required")
        }
        Request::Authorize(authorize) if authorize.reference.is_empty() => {
            invalid("a reference (the order id) is required")
        }
        _ => Ok(()),
    }
}

#[async_trait]
impl PaymentProvider for PspSimulator {
    async fn authorize(&self, request: AuthorizeRequest) -> Result<Transaction, PspError> {
        self.call(Request::Authorize(request)).await
    }

    async fn capture(&self, request: CaptureRequest) -> Result<Transaction, PspError> {
        self.call(Request::Capture(request)).await
    }

    async fn void(&self, request: VoidRequest) -> Result<Transaction, PspError> {
        self.call(Request::Void(request)).await
    }

    async fn refund(&self, request: RefundRequest) -> Result<Transaction, PspError> {
        self.call(Request::Refund(request)).await
    }

    async fn lookup(&self, idempotency_key: &str) -> Result<Option<Transaction>, PspError> {
        let found = self
            .read(|state| {
                state.keys.get(idempotency_key).map(|record| {
                    (
                        state.ledger[record.transaction].clone(),
                        state.durability_of(record),
                    )
                })
            })
            .await?;
        let Some((transaction, durability)) = found else {
            return Ok(None);
        };
        // Never report a call the store might not have: a caller acting on it could then
        // outlive it across a restart.
        match self.make_durable(durability).await {
            Ok(()) => Ok(Some(transaction)),
            Err(error) => {
                tracing::warn!(%error, "payments: the PSP simulator could not store a call");
                Err(PspError::Unavailable)
            }
        }
    }

    async fn transactions(&self, reference: Option<&str>) -> Result<Vec<Transaction>, PspError> {
        self.read(|state| {
            state
                .ledger
                .iter()
                .filter(|t| reference.is_none_or(|reference| t.reference == reference))
                .cloned()
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::{Behaviour, Outcome};
    use std::time::Duration;

    #[test]
    fn the_token_grammar_maps_tokens_to_behaviour() {
        assert_eq!(Behaviour::from_token("tok_ok"), Some(Behaviour::succeed()));
        assert_eq!(
            Behaviour::from_token("tok_decline_insufficient_funds"),
            Some(Behaviour::decline("insufficient_funds", false))
        );
        assert_eq!(
            Behaviour::from_token("tok_decline_stolen_card"),
            Some(Behaviour::decline("stolen_card", true))
        );
        assert_eq!(
            Behaviour::from_token("tok_latency_250"),
            Some(Behaviour::succeed().with_latency(Duration::from_millis(250)))
        );
        assert_eq!(
            Behaviour::from_token("tok_reply_lost").map(|b| b.outcome),
            Some(Outcome::ReplyLost)
        );
        for unknown in ["ok", "tok_", "tok_decline_", "tok_latency_x", "tok_visa"] {
            assert_eq!(Behaviour::from_token(unknown), None, "{unknown}");
        }
    }
}
