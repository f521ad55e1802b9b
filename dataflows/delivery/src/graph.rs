//! The delivery dataflow itself: reports in; unsubscribes, replacements, counts and alerts out.
//!
//! ```text
//! reports ─ decode+classify ─┬─ errors (dead letters)
//!                            ├─ fold per (app, token): latest report ─┬─ dead, not mismatch ─────────┐
//!                            │                                        ├─ dead by mismatch ─ ⋈ tripped ─┼─ unsubscribes
//!                            │                                        │                    (held)─┐    │
//!                            │                                        └─ replaced ───────────────┼────┴─ token_replacements
//!                            ├─ fold per (app, window): tally ─ tripped windows ─────────────────┴─ alerts (sender-id-mismatch)
//!                            ├─ fold per app: latest success vs sender-config error ─────────────── alerts (sender-config)
//!                            └─ fold per (app, protocol, category, code, spam): count ───────────── error_stats
//! ```
//!
//! Every piece of state is a [`KeyedFold`] keyed by a token, an app, an app's window or a
//! statistics key, so memory grows with those, never with the number of reports. The joins
//! only see the per-token and per-window results.

use std::sync::Arc;

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use sluice_runtime::operators::fold::KeyedFold;
use sluice_runtime::recovery::StateRegistry;
use sluice_runtime::{DeadLetter, Diff, Row, Rows, Value};
use timely::dataflow::operators::vec::Filter;

use crate::classify::Category;
use crate::config::{DeliveryConfig, Guard};
use crate::report::{Outcome, Protocol, Report};
use crate::{DeliveryOutputs, DeliveryState};

/// Shared strings, as they come out of decoded `Value`s.
type Str = Arc<str>;
/// `(app, push_token)`.
pub(crate) type TokenKey = (Str, Str);
/// `(app, window start)`.
pub(crate) type WindowKey = (Str, u64);
/// `(app, protocol, category, code, spam)`.
pub(crate) type StatKey = (Str, Protocol, Category, Str, bool);

/// The codes that count as sender-id mismatches for the guard, in both vocabularies.
pub const SENDER_ID_MISMATCH_CODES: [&str; 2] = ["MismatchSenderId", "SENDER_ID_MISMATCH"];

/// The alert `kind` of a tripped mass-unsubscription guard.
pub const ALERT_SENDER_ID_MISMATCH: &str = "sender-id-mismatch";
/// The alert `kind` of an app whose latest outcome is a sender-configuration error.
pub const ALERT_SENDER_CONFIG: &str = "sender-config";

/// A decoded report and the category of its error (`None` for a delivery).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Classified {
    report: Report,
    category: Option<Category>,
}

/// What a token's latest report means for it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Verdict {
    /// Unsubscribe: the report's category is `token-dead`.
    Dead {
        /// The error code.
        code: Str,
        /// Whether the code is a sender-id mismatch (subject to the guard).
        mismatch: bool,
    },
    /// Retired: a legacy success named a canonical replacement token.
    Replaced {
        /// The token to use instead.
        new_token: Str,
    },
    /// Nothing to do: delivered, or failed for a reason that is not the token's.
    Alive,
}

/// A token's latest report, reduced to what the rules need.
///
/// The field order is the order "latest" is decided by: `ts`, then, at equal `ts`, a
/// delivery over a failure (a token that just delivered is not dead), then the larger
/// `message_id`, then the rest — so the outcome never depends on arrival order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) struct Latest {
    ts: u64,
    delivered: bool,
    message_id: Str,
    protocol: Protocol,
    verdict: Verdict,
}

impl Latest {
    fn of(c: &Classified) -> Latest {
        let r = &c.report;
        let verdict = match (&r.outcome, c.category) {
            (Outcome::Delivered { replacement: Some(new) }, _) => Verdict::Replaced {
                new_token: Arc::clone(new),
            },
            (Outcome::Failed { code, .. }, Some(Category::TokenDead)) => Verdict::Dead {
                code: Arc::clone(code),
                mismatch: is_mismatch(r),
            },
            _ => Verdict::Alive,
        };
        Latest {
            ts: r.ts,
            delivered: matches!(r.outcome, Outcome::Delivered { .. }),
            message_id: Arc::clone(&r.message_id),
            protocol: r.protocol,
            verdict,
        }
    }
}

/// An app's latest success and latest sender-configuration error, each by `ts`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct AppHealth {
    delivered: Option<u64>,
    problem: Option<SenderProblem>,
}

/// A sender-configuration error: `(ts, message_id, code, protocol)`, ordered by `ts` first.
type SenderProblem = (u64, Str, Str, Protocol);

/// Whether a report is a sender-id mismatch.
fn is_mismatch(r: &Report) -> bool {
    r.code().is_some_and(|c| SENDER_ID_MISMATCH_CODES.contains(&&**c))
}

/// Builds the dataflow; see [`crate::delivery`].
pub(crate) fn build<'s>(
    reports: Rows<'s>,
    config: &DeliveryConfig,
    name: &str,
    state: &mut StateRegistry,
) -> DeliveryOutputs<'s> {
    let guard = config.guard;
    let stage: Str = Arc::from(format!("node {name}"));
    let table = Arc::clone(&config.classification);

    // Reports are events; a retraction of one is not a report (and the planner only wires
    // append sources here), so only insertions go on.
    let decoded = reports
        .inner
        .filter(|(_, _, diff)| *diff > 0)
        .as_collection()
        .map(move |row: Row| match Report::decode(&row.val) {
            Ok(report) => {
                let category = match &report.outcome {
                    Outcome::Failed { code, facts } => Some(table.classify(report.protocol, code, *facts)),
                    Outcome::Delivered { .. } => None,
                };
                Ok(Classified { report, category })
            }
            Err(e) => Err(DeadLetter::for_row(&row, &stage, e)),
        });
    let errors = decoded.clone().flat_map(Result::err);
    let ok = decoded.flat_map(Result::ok);

    // Rules 1 and 2: one latest report per token.
    let (verdicts, tokens) = ok
        .clone()
        .map(|c| {
            (
                (Arc::clone(&c.report.app), Arc::clone(&c.report.push_token)),
                Latest::of(&c),
            )
        })
        .keyed_fold_checkpointed(
            &format!("{name}: latest report per token"),
            |_token, latest: &mut Option<Latest>, report: Latest| {
                if latest.as_ref().is_none_or(|l| report > *l) {
                    *latest = Some(report);
                }
            },
            |token, latest| (latest.verdict != Verdict::Alive).then(|| (token.clone(), latest.clone())),
            &state.fold(&format!("{name}.tokens")),
        );

    // Rule 3: each app's windows, and the ones that trip the guard.
    let (tripped, windows) = ok
        .clone()
        .map(move |c| {
            (
                (Arc::clone(&c.report.app), guard.window_start(c.report.ts)),
                is_mismatch(&c.report),
            )
        })
        .keyed_fold_checkpointed(
            &format!("{name}: guard windows"),
            |_window, tally: &mut Option<(u64, u64)>, mismatch: bool| {
                let (reports, mismatches) = tally.get_or_insert((0, 0));
                *reports += 1;
                *mismatches += u64::from(mismatch);
            },
            move |window, &(reports, mismatches)| {
                guard
                    .trips(reports, mismatches)
                    .then(|| (window.clone(), (reports, mismatches)))
            },
            &state.fold(&format!("{name}.windows")),
        );

    let mismatched = verdicts
        .clone()
        .filter(|(_, l)| matches!(l.verdict, Verdict::Dead { mismatch: true, .. }))
        .map(move |(token, l)| ((Arc::clone(&token.0), guard.window_start(l.ts)), (token, l)));
    let tripped_keys = tripped
        .clone()
        .map(|(window, _)| window)
        .arrange_by_self_named(&format!("{name}: tripped windows"));
    let held = mismatched
        .clone()
        .arrange_by_key_named(&format!("{name}: mismatch unsubscribes by window"))
        .join_core(tripped_keys, |window, unsub, _| Some((window.clone(), unsub.clone())));
    let released = mismatched.concat(held.clone().negate()).map(|(_, unsub)| unsub);

    let dead = verdicts
        .clone()
        .filter(|(_, l)| matches!(l.verdict, Verdict::Dead { mismatch: false, .. }))
        .concat(released);
    let replaced = verdicts.filter(|(_, l)| matches!(l.verdict, Verdict::Replaced { .. }));
    let unsubscribes = dead
        .concat(replaced.clone())
        .flat_map(|(token, l)| unsubscribe_row(&token, &l));
    let token_replacements = replaced.flat_map(|(token, l)| replacement_row(&token, &l));

    // Alerts: a tripped guard that holds unsubscribes, described by its latest window.
    let held_per_app = held
        .map(|((app, window), _)| (app, window))
        .reduce_named(
            &format!("{name}: held unsubscribes per app"),
            |_app, windows: &[(&u64, Diff)], out: &mut Vec<((u64, u64), Diff)>| {
                let held: Diff = windows.iter().map(|(_, n)| n).sum();
                if let (Some((latest, _)), Ok(held)) = (windows.last(), u64::try_from(held)) {
                    out.push(((**latest, held), 1));
                }
            },
        )
        .map(|(app, (window, held))| ((app, window), held))
        .arrange_by_key_named(&format!("{name}: held unsubscribes by latest window"));
    let mismatch_alerts = tripped
        .arrange_by_key_named(&format!("{name}: tripped window tallies"))
        .join_core(held_per_app, move |(app, start), &(reports, mismatches), &held| {
            Some(mismatch_alert(app, *start, guard, reports, mismatches, held))
        });

    // Alerts: an app whose latest outcome is a sender-configuration error.
    let (sender_alerts, apps) = ok
        .clone()
        .filter(|c| c.category.is_none() || c.category == Some(Category::SenderConfig))
        .map(|c| (Arc::clone(&c.report.app), c))
        .keyed_fold_checkpointed(
            &format!("{name}: sender configuration per app"),
            |_app, health: &mut Option<AppHealth>, c: Classified| {
                let h = health.get_or_insert_with(AppHealth::default);
                let r = c.report;
                match r.outcome {
                    Outcome::Delivered { .. } => h.delivered = h.delivered.max(Some(r.ts)),
                    Outcome::Failed { code, .. } => {
                        let problem = (r.ts, r.message_id, code, r.protocol);
                        if h.problem.as_ref().is_none_or(|p| problem > *p) {
                            h.problem = Some(problem);
                        }
                    }
                }
            },
            |app, h| {
                let p = h.problem.as_ref()?;
                // At equal `ts` the success wins, as for tokens.
                h.delivered.is_none_or(|d| p.0 > d).then(|| sender_alert(app, p))
            },
            &state.fold(&format!("{name}.apps")),
        );
    let alerts = mismatch_alerts.concat(sender_alerts);

    // Rule 4: error counts.
    let (error_stats, error_keys) = ok
        .flat_map(|c| {
            let r = c.report;
            let code = r.code().cloned();
            c.category
                .zip(code)
                .map(|(category, code)| ((r.app, r.protocol, category, code, r.spam), ()))
        })
        .keyed_fold_checkpointed(
            &format!("{name}: error counts"),
            |_key, count: &mut Option<u64>, ()| *count = Some(count.unwrap_or(0) + 1),
            |key, count| Some(stats_row(key, *count)),
            &state.fold(&format!("{name}.error_counts")),
        );

    DeliveryOutputs {
        unsubscribes,
        token_replacements,
        error_stats,
        alerts,
        errors,
        state: DeliveryState {
            tokens,
            windows,
            apps,
            error_keys,
        },
    }
}

fn token_key(token: &TokenKey) -> Value {
    Value::map([
        ("app", Value::Str(Arc::clone(&token.0))),
        ("push_token", Value::Str(Arc::clone(&token.1))),
    ])
}

/// The unsubscribe of a dead or replaced token.
fn unsubscribe_row(token: &TokenKey, l: &Latest) -> Option<Row> {
    let (reason, code) = match &l.verdict {
        Verdict::Dead { code, .. } => (Category::TokenDead.as_str(), Value::Str(Arc::clone(code))),
        Verdict::Replaced { .. } => ("replaced", Value::Null),
        Verdict::Alive => return None,
    };
    Some(Row::derived(
        token_key(token),
        Value::map([
            ("reason", Value::from(reason)),
            ("code", code),
            ("protocol", Value::from(l.protocol.as_str())),
            ("ts", Value::from(l.ts)),
        ]),
    ))
}

fn replacement_row(token: &TokenKey, l: &Latest) -> Option<Row> {
    let Verdict::Replaced { new_token } = &l.verdict else {
        return None;
    };
    Some(Row::derived(
        token_key(token),
        Value::map([("new_token", Value::Str(Arc::clone(new_token)))]),
    ))
}

fn stats_row(key: &StatKey, count: u64) -> Row {
    let (app, protocol, category, code, spam) = key;
    Row::derived(
        Value::map([
            ("app", Value::Str(Arc::clone(app))),
            ("protocol", Value::from(protocol.as_str())),
            ("category", Value::from(category.as_str())),
            ("code", Value::Str(Arc::clone(code))),
            ("spam", Value::Bool(*spam)),
        ]),
        Value::map([("count", Value::from(count))]),
    )
}

fn alert_key(app: &Str, kind: &str) -> Value {
    Value::map([("app", Value::Str(Arc::clone(app))), ("kind", Value::from(kind))])
}

fn mismatch_alert(app: &Str, start: u64, guard: Guard, reports: u64, mismatches: u64, held: u64) -> Row {
    Row::derived(
        alert_key(app, ALERT_SENDER_ID_MISMATCH),
        Value::map([
            ("held", Value::from(held)),
            ("window_start", Value::from(start)),
            ("window_end", Value::from(start.saturating_add(guard.window_ms))),
            ("reports", Value::from(reports)),
            ("mismatches", Value::from(mismatches)),
            ("share", Value::from(mismatches as f64 / reports.max(1) as f64)),
        ]),
    )
}

fn sender_alert(app: &Str, (ts, _, code, protocol): &SenderProblem) -> Row {
    Row::derived(
        alert_key(app, ALERT_SENDER_CONFIG),
        Value::map([
            ("code", Value::Str(Arc::clone(code))),
            ("protocol", Value::from(protocol.as_str())),
            ("ts", Value::from(*ts)),
        ]),
    )
}
