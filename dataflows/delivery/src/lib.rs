//! The delivery dataflow: push delivery reports to unsubscribes, replacements, error
//! statistics and alerts (spec/delivery.md).
//!
//! [`delivery`] takes the reports as generic rows (each `val` a JSON report), decodes them
//! into typed [`Report`]s, classifies failures with a [`Classification`] table loaded as data,
//! and maintains four outputs, all upserts keyed by a map of the key fields:
//!
//! | output | key | value |
//! |---|---|---|
//! | `unsubscribes` | `app`, `push_token` | `reason` (`token-dead` or `replaced`), `code` (null when replaced), `protocol`, `ts` |
//! | `token_replacements` | `app`, `push_token` | `new_token` |
//! | `error_stats` | `app`, `protocol`, `category`, `code`, `spam` | `count` |
//! | `alerts` | `app`, `kind` | by kind, see below |
//!
//! Decisions where the spec is silent:
//!
//! * **Latest.** A token's state is its latest report by `ts`; at equal `ts` a delivery wins
//!   over a failure (a token that just delivered is not dead), then the larger `message_id`.
//!   Everything about a token (unsubscribe, replacement) follows from that one report, so
//!   the outputs never depend on arrival order.
//! * **Replacement.** A legacy success with a `registration_id` (other than the token
//!   itself) emits the replacement and *retires* the old token: an unsubscribe with reason
//!   `replaced`, so consumers stop sending to it. Both are withdrawn if a later report
//!   about the old token says otherwise (e.g. a plain success: the token came back).
//! * **Guard.** Windows are tumbling, by report `ts`, per app. A window trips when it has at
//!   least `min_reports` reports (all statuses) and more than `share` of them are sender-id
//!   mismatches (legacy `MismatchSenderId` or v1 `SENDER_ID_MISMATCH`). An unsubscribe caused
//!   by a mismatch report in a tripped window is held (absent from `unsubscribes`); it is
//!   released if late reports un-trip the window. Other unsubscribes are never held.
//! * **Alerts.** `kind = "sender-id-mismatch"` exists while an app has held unsubscribes:
//!   `held` (how many), and the latest tripped window holding any (`window_start`,
//!   `window_end`, `reports`, `mismatches`, `share`). `kind = "sender-config"` exists while an
//!   app's latest `sender-config` failure is newer than its latest success: `code`,
//!   `protocol`, `ts`.
//! * **Counts.** `error_stats` counts failed deliveries only; successes are not errors.
//! * **Bad input.** A report that cannot be decoded goes to `errors` as a dead letter
//!   (`stage = "node <name>"`, its position, the reason, its JSON) and changes nothing else.
//!   Retractions in the input are ignored: reports are events.
//!
//! Memory: every piece of state is keyed by a token, an app, an app's window, or a
//! statistics key (see [`DeliveryState`]); none grows with the number of reports. The
//! windows of an app accumulate over time (one tally per app per window).

mod classify;
mod config;
mod graph;
mod report;

use sluice_runtime::operators::fold::FoldState;
use sluice_runtime::recovery::StateRegistry;
use sluice_runtime::{DeadLetters, Rows};

pub use classify::{BUILTIN_TABLE, Category, Classification, Condition, Rule, TableError, TableProblem};
pub use config::{
    DEFAULT_GUARD_MIN_REPORTS, DEFAULT_GUARD_SHARE, DEFAULT_GUARD_WINDOW_MS, DeliveryConfig, DeliveryConfigError, Guard,
};
pub use graph::{ALERT_SENDER_CONFIG, ALERT_SENDER_ID_MISMATCH, SENDER_ID_MISMATCH_CODES};
pub use report::{DecodeError, Facts, Outcome, Protocol, Report};

/// The names of the outputs, in the order of [`DeliveryOutputs`]' fields.
pub const OUTPUTS: &[&str] = &["unsubscribes", "token_replacements", "error_stats", "alerts"];

/// The collections the delivery dataflow produces.
pub struct DeliveryOutputs<'s> {
    /// Tokens to stop sending to, keyed by `app`, `push_token`.
    pub unsubscribes: Rows<'s>,
    /// Replacement tokens, keyed by the old `app`, `push_token`.
    pub token_replacements: Rows<'s>,
    /// Failure counts per `app`, `protocol`, `category`, `code`, `spam`.
    pub error_stats: Rows<'s>,
    /// Alerts per `app`, `kind`.
    pub alerts: Rows<'s>,
    /// Reports that could not be decoded.
    pub errors: DeadLetters<'s>,
    /// A handle on this worker's state, for metrics and tests.
    pub state: DeliveryState,
}

/// This worker's share of the dataflow's state; read it between worker steps.
pub struct DeliveryState {
    tokens: FoldState<graph::TokenKey, graph::Latest>,
    windows: FoldState<graph::WindowKey, (u64, u64)>,
    apps: FoldState<std::sync::Arc<str>, graph::AppHealth>,
    error_keys: FoldState<graph::StatKey, u64>,
}

impl DeliveryState {
    /// Tokens with a latest report on this worker.
    pub fn tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Guard windows (app, window) tallied on this worker.
    pub fn windows(&self) -> usize {
        self.windows.len()
    }

    /// Apps whose sender-configuration health this worker tracks.
    pub fn apps(&self) -> usize {
        self.apps.len()
    }

    /// Distinct `error_stats` keys counted on this worker.
    pub fn error_keys(&self) -> usize {
        self.error_keys.len()
    }
}

/// Builds the delivery dataflow over `reports` (rows whose `val` is a JSON delivery report).
///
/// `name` names the operators and arrangements (`"<name>: latest report per token"`, …) and
/// the dead letters' stage (`"node <name>"`).
/// Its folds save their state in checkpoints through `state`, under names starting with `name`.
pub fn delivery<'s>(
    reports: Rows<'s>,
    config: &DeliveryConfig,
    name: &str,
    state: &mut StateRegistry,
) -> DeliveryOutputs<'s> {
    graph::build(reports, config, name, state)
}
