use super::*;

fn rec(json: &str) -> Value {
    Value::from_json_str(json).expect("json")
}

fn eval(src: &str, json: &str) -> Result<Value, EvalError> {
    Expr::compile(src)
        .expect("compiles")
        .evaluator()
        .eval(&rec(json), &Value::Null)
}

#[test]
fn fields_are_variables() {
    let r = r#"{"status":"error","spam":true,"n":3}"#;
    assert_eq!(eval(r#"status == "error" && spam"#, r), Ok(Value::Bool(true)));
    assert_eq!(eval("n * 2 + 1", r), Ok(Value::Int(7)));
    assert_eq!(eval("n > 2.5", r), Ok(Value::Bool(true)));
}

#[test]
fn nested_maps_lists_and_has() {
    let r = r#"{"data":{"body":{"x":1,"tags":["a","b"]},"headers":{"y":"z"}}}"#;
    assert_eq!(
        eval(r#"data.body.x == 1 && data.headers.y == "z""#, r),
        Ok(Value::Bool(true))
    );
    assert_eq!(eval(r#""b" in data.body.tags"#, r), Ok(Value::Bool(true)));
    assert_eq!(eval("has(data.body.missing)", r), Ok(Value::Bool(false)));
    assert_eq!(eval("size(data.body.tags)", r), Ok(Value::Int(2)));
}

#[test]
fn record_and_key_bindings() {
    let e = Expr::compile(r#"record.a + key.id"#).expect("compiles");
    let key = Value::map([("id", Value::Int(10))]);
    assert_eq!(e.evaluator().eval(&rec(r#"{"a":1}"#), &key), Ok(Value::Int(11)));
}

#[test]
fn missing_fields_and_type_errors_are_errors_not_panics() {
    assert!(eval("nope == 1", r#"{"a":1}"#).is_err());
    assert!(eval(r#"a + "x""#, r#"{"a":1}"#).is_err());
    assert!(eval("a.b.c", r#"{"a":{"b":1}}"#).is_err());
    let cond = Expr::compile("a").expect("compiles");
    assert!(cond.evaluator().eval_bool(&rec(r#"{"a":1}"#), &Value::Null).is_err());
}

#[test]
fn map_results_convert_back_losslessly() {
    let out = eval(
        r#"{"name": user, "n": n, "f": 1.5, "l": [1, "two", null], "b": true}"#,
        r#"{"user":"u1","n":18446744073709551615}"#,
    )
    .expect("evaluates");
    assert_eq!(
        out.to_json_string(),
        r#"{"b":true,"f":1.5,"l":[1,"two",null],"n":18446744073709551615,"name":"u1"}"#
    );
}

#[test]
fn values_round_trip_through_cel() {
    let v = rec(r#"{"a":[1,2.5,"s",null,true,{"b":-4}],"c":{}}"#);
    assert_eq!(from_cel(&to_cel(&v)), Ok(v));
}

#[test]
fn compile_errors_name_their_position() {
    let e = Expr::compile(r#"status == "error" &&"#).expect_err("does not compile");
    assert_eq!(e.line, 1);
    assert!(e.column > 1, "{e:?}");
    let e = Expr::compile("a ==\n  (").expect_err("does not compile");
    assert_eq!(e.line, 2, "{e:?}");
}

#[test]
fn expr_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Expr>();
}
