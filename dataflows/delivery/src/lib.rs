//! The delivery dataflow: push delivery reports to unsubscribes, replacements, error statistics and alerts.
