//! `sluice validate`: every problem of a pipeline file at once, with file, line, column and
//! key path, checked against golden messages.

mod common;

use std::path::Path;

use common::{assert_golden, root, sluice};

fn problems_of(fixture: &str) -> String {
    let rel = format!("tests/fixtures/invalid/{fixture}.toml");
    let text = std::fs::read_to_string(root().join(&rel)).expect("read fixture");
    // No variables are set: `${...}` references must be reported, whatever the CI sets.
    match sluice::load_str(Path::new(&rel), &text, &|_| None) {
        Ok(_) => panic!("{rel} was accepted"),
        Err(sluice::LoadError::Invalid(problems)) => problems.iter().map(|p| format!("{p}\n")).collect(),
        Err(other) => panic!("{rel}: unexpected error {other}"),
    }
}

#[test]
fn unknown_keys_types_and_missing_keys_are_all_reported() {
    assert_golden("validate/keys.txt", &problems_of("keys"));
}

#[test]
fn dangling_references_outputs_and_cycles_are_reported() {
    assert_golden("validate/graph.txt", &problems_of("graph"));
}

#[test]
fn envelope_and_key_mismatches_are_reported() {
    assert_golden("validate/shapes.txt", &problems_of("shapes"));
}

#[test]
fn expressions_and_domain_parameters_are_compiled_at_validation() {
    assert_golden("validate/expressions.txt", &problems_of("expressions"));
}

#[test]
fn domain_nodes_and_formats_are_checked() {
    assert_golden("validate/domains.txt", &problems_of("domains"));
}

#[test]
fn kafka_sources_and_sinks_are_checked() {
    assert_golden("validate/kafka.txt", &problems_of("kafka"));
}

#[test]
fn checkpoints_refuse_nodes_whose_state_they_cannot_restore() {
    assert_golden("validate/checkpoints.txt", &problems_of("checkpoints"));
}

#[test]
fn kinesis_and_dynamodb_sources_and_sinks_are_checked() {
    assert_golden("validate/aws.txt", &problems_of("aws"));
}

#[test]
fn served_sinks_and_the_server_section_are_checked() {
    assert_golden("validate/server.txt", &problems_of("server"));
}

#[test]
fn missing_environment_variables_are_errors() {
    assert_golden("validate/env.txt", &problems_of("env"));
}

#[test]
fn invalid_toml_is_reported_with_its_position() {
    assert_golden("validate/syntax.txt", &problems_of("syntax"));
}

#[test]
fn the_cli_exits_2_and_prints_every_problem() {
    let out = sluice(&["validate", "tests/fixtures/invalid/keys.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = problems_of("keys");
    for line in expected.lines() {
        assert!(stderr.contains(line), "stderr lacks {line:?}:\n{stderr}");
    }
    assert!(stderr.contains("nothing was run"));
    assert!(out.stdout.is_empty());
}

#[test]
fn every_example_pipeline_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("examples")).expect("examples dir") {
        let dir = entry.expect("entry").path();
        // Each example's pipeline, and the loaders of the Kafka examples.
        for path in ["pipeline.toml", "load.toml", "serve.toml", "hub.toml"].map(|f| dir.join(f)) {
            if !path.exists() {
                continue;
            }
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["validate", &path.to_string_lossy()])
                .env("KAFKA_BROKERS", "127.0.0.1:9092")
                .env("AWS_KINESIS_ENDPOINT", "http://127.0.0.1:4567")
                .env("AWS_DYNAMODB_ENDPOINT", "http://127.0.0.1:4568")
                .env("SLUICE_TOKEN_KEY", "a-key-of-sixteen-bytes")
                .env("CDS_AUTH_TOKEN", "secret")
                .env("SLUICE_PUBLISH_SECRET", "a-publish-secret-of-32-bytes-....")
                .output()
                .expect("run sluice");
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "expected every example and the Kafka loaders, found {checked}"
    );
}

#[test]
fn graph_prints_the_pipeline_as_dot() {
    let out = sluice(&["graph", "examples/delivery/pipeline.toml"]);
    assert_eq!(out.status.code(), Some(0));
    assert_golden("graph/delivery.dot", &String::from_utf8_lossy(&out.stdout));
}

#[test]
fn publish_endpoints_reloaded_tables_and_webhook_sinks_are_checked() {
    assert_golden("validate/hub.txt", &problems_of("hub"));
}
