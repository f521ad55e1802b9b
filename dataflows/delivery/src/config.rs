//! The delivery node's configuration: the classification table and the mass-unsubscription
//! guard, validated once when the pipeline is checked, never at the first report.

use std::path::Path;
use std::sync::Arc;

use crate::classify::{Classification, TableError};

/// Default share of `SENDER_ID_MISMATCH` reports above which an app's window trips the guard.
pub const DEFAULT_GUARD_SHARE: f64 = 0.5;
/// Default length of the guard's tumbling window, in milliseconds of report `ts` (10 minutes).
pub const DEFAULT_GUARD_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Default number of reports an app needs in a window before the guard can trip, so that a
/// single mismatch in a quiet window (a share of 100%) does not hold anything.
pub const DEFAULT_GUARD_MIN_REPORTS: u64 = 20;

/// The mass-unsubscription guard (rule 3 of spec/delivery.md).
///
/// Reports fall into tumbling windows of `window_ms` by their `ts`. An app's window *trips*
/// when it has at least `min_reports` reports and more than `share` of them are sender-id
/// mismatches; an unsubscribe caused by a mismatch report in a tripped window is held.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guard {
    /// Share of mismatches (of all the app's reports in the window) that must be exceeded.
    pub share: f64,
    /// Window length in milliseconds of report `ts`.
    pub window_ms: u64,
    /// Reports the window needs before it can trip.
    pub min_reports: u64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            share: DEFAULT_GUARD_SHARE,
            window_ms: DEFAULT_GUARD_WINDOW_MS,
            min_reports: DEFAULT_GUARD_MIN_REPORTS,
        }
    }
}

impl Guard {
    /// Whether a window with `reports` reports, `mismatches` of them mismatches, trips.
    pub fn trips(&self, reports: u64, mismatches: u64) -> bool {
        // Exact for any count below 2^53, far beyond a window's reports.
        reports >= self.min_reports.max(1) && (mismatches as f64) > self.share * (reports as f64)
    }

    /// The window a report at `ts` falls in, as its start time.
    pub fn window_start(&self, ts: u64) -> u64 {
        ts - ts % self.window_ms
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.share) {
            problems.push(format!("guard share must be between 0 and 1, found {}", self.share));
        }
        if self.window_ms == 0 {
            problems.push("guard window must be at least 1 ms".to_owned());
        }
        problems
    }
}

/// Everything the delivery dataflow needs besides its input.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// The classification table (shared by every worker).
    pub classification: Arc<Classification>,
    /// The mass-unsubscription guard.
    pub guard: Guard,
}

/// Every problem with a delivery configuration; all are the user's to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid delivery configuration:{}", .problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
pub struct DeliveryConfigError {
    problems: Vec<String>,
    table: Option<TableError>,
}

impl DeliveryConfigError {
    /// The problems, one message each (table problems carry their file and line).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The classification table's problems, when the table was at fault.
    pub fn table(&self) -> Option<&TableError> {
        self.table.as_ref()
    }
}

impl DeliveryConfig {
    /// Builds a configuration from the pipeline's parameters, each `None` meaning the
    /// default: the built-in table, [`DEFAULT_GUARD_SHARE`], [`DEFAULT_GUARD_WINDOW_MS`],
    /// [`DEFAULT_GUARD_MIN_REPORTS`]. Reads and checks the table file and the parameters,
    /// and reports every problem at once.
    pub fn new(
        classification_path: Option<&Path>,
        share: Option<f64>,
        window_ms: Option<u64>,
        min_reports: Option<u64>,
    ) -> Result<DeliveryConfig, DeliveryConfigError> {
        let guard = params(share, window_ms, min_reports);
        let table = match classification_path {
            None => Classification::builtin(),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Classification::parse(&text, &path.display().to_string()),
                Err(e) => {
                    return Err(DeliveryConfigError {
                        problems: std::iter::once(read_problem(path, &e)).chain(guard.check()).collect(),
                        table: None,
                    });
                }
            },
        };
        DeliveryConfig::with_table(table, guard)
    }

    /// A configuration from an already parsed table (or its error) and a guard.
    pub fn with_table(
        table: Result<Classification, TableError>,
        guard: Guard,
    ) -> Result<DeliveryConfig, DeliveryConfigError> {
        let guard_problems = guard.check();
        match table {
            Ok(t) if guard_problems.is_empty() => Ok(DeliveryConfig {
                classification: Arc::new(t),
                guard,
            }),
            Ok(_) => Err(DeliveryConfigError {
                problems: guard_problems,
                table: None,
            }),
            Err(e) => Err(DeliveryConfigError {
                problems: e
                    .problems
                    .iter()
                    .map(|p| format!("{}: {p}", e.origin))
                    .chain(guard_problems)
                    .collect(),
                table: Some(e),
            }),
        }
    }
}

fn params(share: Option<f64>, window_ms: Option<u64>, min_reports: Option<u64>) -> Guard {
    let d = Guard::default();
    Guard {
        share: share.unwrap_or(d.share),
        window_ms: window_ms.unwrap_or(d.window_ms),
        min_reports: min_reports.unwrap_or(d.min_reports),
    }
}

fn read_problem(path: &Path, e: &std::io::Error) -> String {
    format!("cannot read classification table {}: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load() {
        let c = DeliveryConfig::new(None, None, None, None).expect("defaults are valid");
        assert_eq!(c.guard, Guard::default());
        assert!(!c.classification.rules().is_empty());
    }

    #[test]
    fn every_problem_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("table.toml");
        std::fs::write(&path, "[[rule]]\ncodes = [\"X\"]\ncategory = \"fatal\"\n").expect("write");
        let err = DeliveryConfig::new(Some(&path), Some(1.5), Some(0), None).expect_err("invalid");
        assert_eq!(err.problems().len(), 3, "{err}");
        assert!(err.problems()[0].ends_with("line 3: rule 1: unknown category `fatal`; expected one of: token-dead, bad-message, retry-later, sender-config, unknown"), "{err}");
        assert!(err.table().is_some());

        let missing = dir.path().join("absent.toml");
        let err = DeliveryConfig::new(Some(&missing), None, None, None).expect_err("missing file");
        assert!(
            err.problems()[0].starts_with("cannot read classification table"),
            "{err}"
        );
    }

    #[test]
    fn guard_trips_above_the_share_with_enough_reports() {
        let g = Guard {
            share: 0.5,
            window_ms: 10,
            min_reports: 4,
        };
        assert!(!g.trips(3, 3));
        assert!(!g.trips(4, 2));
        assert!(g.trips(4, 3));
        assert_eq!(g.window_start(27), 20);
    }
}
