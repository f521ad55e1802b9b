//! Python-style filters: the CEL they become, and what they match.

use sluice_runtime::Value;

use crate::{Expr, translate_python};

fn cel(python: &str) -> String {
    translate_python(python).unwrap_or_else(|e| panic!("{python}: {e}"))
}

fn refused(python: &str) -> String {
    match translate_python(python) {
        Ok(cel) => panic!("{python} was accepted as {cel}"),
        Err(e) => e.to_string(),
    }
}

const EVENT: &str = r#"{"topic": "t", "data": {"body": {"x": 1, "y": "v1", "s": "hello", "n": null, "zero": 0,
    "empty": "", "list": [], "map": {}, "tags": ["a", "b"]}, "headers": {"region": "eu"}}}"#;

fn matches(filter: &str) -> Result<bool, crate::EvalError> {
    let record = Value::from_json_str(EVENT).expect("JSON");
    Expr::compile_filter(filter)
        .unwrap_or_else(|e| panic!("{filter}: {e}"))
        .eval_bool(&record, &Value::Null)
}

#[test]
fn constructs_become_their_cel() {
    assert_eq!(cel(r#"data["body"]["x"] == 1"#), "data.body.x == 1");
    assert_eq!(
        cel(r#"data["content-type"]["in"][0]"#),
        r#"truthy(data["content-type"]["in"][0])"#
    );
    assert_eq!(cel(r#"data["a"]["in"]"#), r#"truthy(data.a["in"])"#);
    assert_eq!(
        cel(r#"data["a"] == 1 and data["b"] != 'z' or not data["c"]"#),
        r#"((data.a == 1 && data.b != "z") || !(truthy(data.c)))"#
    );
    assert_eq!(cel("not data['a'] == None"), "!(data.a == null)");
    assert_eq!(cel("1 < data['x'] <= 3"), "(1 < data.x && data.x <= 3)");
    assert_eq!(cel("data['x'] is not None"), "data.x != null");
    assert_eq!(cel("'a' not in data['t']"), r#"!py_in("a", data.t)"#);
    assert_eq!(cel("len(data['t']) > 1"), "size(data.t) > 1");
    assert_eq!(cel("data['s'].startswith('he')"), r#"data.s.startsWith("he")"#);
    assert_eq!(cel("data['x']"), "truthy(data.x)");
    assert_eq!(cel("True"), "true");
    assert_eq!(cel(r#"data["q"] == "say \"hi\"\n""#), r#"data.q == "say \"hi\"\n""#);
}

#[test]
fn filters_match_as_python_would() {
    let cases = [
        (
            r#"data["body"]["x"] == 1 and data["headers"]["region"] == "eu" or not data["body"]["y"]"#,
            true,
        ),
        (r#"data["body"]["x"] == 2 and True or data["body"]["y"] == "v2""#, false),
        (r#"not data["body"]["x"] == 2"#, true),
        ("0 < data['body']['x'] < 2", true),
        ("0 < data['body']['x'] < 1", false),
        (r#""ell" in data["body"]["s"]"#, true),
        (r#""x" in data["body"]"#, true),
        (r#""nope" not in data["body"]"#, true),
        ("1 in [1, 2]", true),
        ("'a' in data['body']['tags']", true),
        ("data['body']['n'] is None", true),
        (
            "data['body']['empty'] or data['body']['zero'] or data['body']['list'] or data['body']['map']",
            false,
        ),
        ("data['body']['n']", false),
        ("data['body']['s'] and data['body']['x']", true),
        ("len(data['body']['tags']) == 2", true),
        ("data['body']['s'].endswith('llo')", true),
        ("-data['body']['x'] + 2 * 3 == 5", true),
        ("topic == 't'", true),
        (r#"data["body"]["x"] == 3 and data["body"]["y"] == "v1""#, false),
        // CEL, as the generator's other filters are written.
        (r#"data.body.x == 1 && data.headers.region == "eu""#, true),
        ("", true),
    ];
    for (filter, want) in cases {
        assert_eq!(matches(filter), Ok(want), "{filter}");
    }
}

#[test]
fn a_missing_key_or_a_type_error_is_an_evaluation_error() {
    assert!(matches(r#"data["body"]["missing"] == 1"#).is_err());
    assert!(matches(r#"1 in data["body"]["x"]"#).is_err());
    assert!(matches(r#"data["body"]["s"] < 3"#).is_err());
}

#[test]
fn anything_beyond_the_expression_subset_is_refused() {
    for (python, why) in [
        ("__import__('os').system('rm -rf /')", "`__import__` is not allowed"),
        ("data.body", "attribute access"),
        ("lambda: 1", "`:` is not part"),
        ("lambda x=1", "`=` is not part"),
        ("lambda", "`lambda` is not allowed"),
        ("[x for x in data]", "`x` is not allowed"),
        ("open('f')", "`open` is not allowed"),
        ("data['s'].lower()", "attribute access"),
        ("data['a'] == 1; 2", "`;` is not part"),
        ("data['a'] == 'open", "not closed"),
        ("data['a'] ==", "ends too early"),
    ] {
        let error = refused(python);
        assert!(error.contains(why), "{python}: {error}");
    }
}

#[test]
fn filters_that_are_neither_are_refused_naming_both_attempts() {
    let e = Expr::compile_filter("__import__('os').system('x')").expect_err("refused");
    assert!(e.message.contains("unknown function"), "{e}");
    assert!(e.message.contains("`__import__` is not allowed"), "{e}");
    let e = Expr::compile_filter("data.body.x ==").expect_err("refused");
    assert!(e.message.starts_with("neither CEL"), "{e}");
}

#[test]
fn errors_point_at_the_offending_place() {
    let e = translate_python("data['a'] == 1 and\n  evil()").expect_err("refused");
    let p = e.position.expect("a position");
    assert_eq!((p.line, p.column), (2, 3));
}
