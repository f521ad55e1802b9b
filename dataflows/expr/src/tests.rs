use super::*;

fn rec(json: &str) -> Value {
    Value::from_json_str(json).expect("json")
}

fn compile(src: &str) -> Expr {
    Expr::compile(src).expect("compiles")
}

fn eval(src: &str, json: &str) -> Result<Value, EvalError> {
    compile(src).eval(&rec(json), &Value::Null)
}

#[test]
fn fields_are_variables() {
    let r = r#"{"status":"error","spam":true,"n":3,"f":0.5}"#;
    assert_eq!(eval(r#"status == "error" && spam"#, r), Ok(Value::Bool(true)));
    assert_eq!(eval("n * 2 + 1", r), Ok(Value::Int(7)));
    assert_eq!(eval("n / 2", r), Ok(Value::Int(1)));
    assert_eq!(eval("f * 4.0", r), Ok(Value::from(2.0)));
    assert_eq!(eval("n > 2.5", r), Ok(Value::Bool(true)));
    assert_eq!(eval("double(n) / 2.0", r), Ok(Value::from(1.5)));
}

#[test]
fn strings() {
    let r = r#"{"name":"Ada Lovelace","tag":"X"}"#;
    assert_eq!(eval(r#"name + "!""#, r), Ok(Value::str("Ada Lovelace!")));
    assert_eq!(
        eval(r#"name.startsWith("Ada") && name.contains("Love")"#, r),
        Ok(Value::Bool(true))
    );
    assert_eq!(eval("size(name)", r), Ok(Value::Int(12)));
    // The `strings` extension.
    assert_eq!(eval("tag.lowerAscii()", r), Ok(Value::str("x")));
    assert_eq!(eval(r#"name.split(" ")[1]"#, r), Ok(Value::str("Lovelace")));
}

#[test]
fn nested_maps_lists_and_has() {
    let r = r#"{"data":{"body":{"x":1,"tags":["a","b"]},"headers":{"y":"z"}}}"#;
    assert_eq!(
        eval(r#"data.body.x == 1 && data.headers.y == "z""#, r),
        Ok(Value::Bool(true))
    );
    assert_eq!(eval(r#"data["body"]["x"]"#, r), Ok(Value::Int(1)));
    assert_eq!(eval(r#""b" in data.body.tags"#, r), Ok(Value::Bool(true)));
    assert_eq!(eval("data.body.tags[0]", r), Ok(Value::str("a")));
    assert_eq!(eval("has(data.body.missing)", r), Ok(Value::Bool(false)));
    assert_eq!(eval("has(data.body.x)", r), Ok(Value::Bool(true)));
    assert_eq!(eval("size(data.body.tags)", r), Ok(Value::Int(2)));
    assert_eq!(eval(r#"data.body.tags.all(t, t != "c")"#, r), Ok(Value::Bool(true)));
    assert_eq!(
        eval("data.body.tags.map(t, t + t)", r),
        Ok(Value::list([Value::str("aa"), Value::str("bb")]))
    );
    assert_eq!(
        eval("data.body == {'x': 1, 'tags': ['a', 'b']}", r),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        eval("{'x': 1, 'tags': ['a', 'b']} == data.body", r),
        Ok(Value::Bool(true))
    );
}

#[test]
fn lists() {
    let r = r#"{"l":[3,1,2],"m":[]}"#;
    assert_eq!(eval("l[0] + l[2]", r), Ok(Value::Int(5)));
    assert_eq!(eval("l + [4]", r), Ok(rec("[3,1,2,4]")));
    assert_eq!(
        eval("l.exists(x, x > 2) && !m.exists(x, true)", r),
        Ok(Value::Bool(true))
    );
    assert_eq!(eval("l.filter(x, x < 3)", r), Ok(rec("[1,2]")));
    assert_eq!(eval("math.greatest(l)", r), Ok(Value::Int(3)));
    assert!(matches!(eval("l[7]", r), Err(EvalError::Failed(_))));
}

#[test]
fn record_and_key_bindings_and_shadowing() {
    let key = Value::map([("id", Value::Int(10))]);
    let e = compile("record.a + key.id");
    assert_eq!(e.eval(&rec(r#"{"a":1}"#), &key), Ok(Value::Int(11)));
    // `key` and `record` win over fields of the same name, which stay reachable.
    let r = rec(r#"{"key":"field","record":"also a field"}"#);
    assert_eq!(compile("key").eval(&r, &key), Ok(key.clone()));
    assert_eq!(compile("record.key").eval(&r, &key), Ok(Value::str("field")));
    assert_eq!(
        compile(r#"record["record"]"#).eval(&r, &key),
        Ok(Value::str("also a field"))
    );
    assert_eq!(compile("record").eval(&r, &key), Ok(r.clone()));
    // Names that are not identifiers go through `record[...]`.
    let r = rec(r#"{"content-type":"json"}"#);
    assert_eq!(
        compile(r#"record["content-type"]"#).eval(&r, &key),
        Ok(Value::str("json"))
    );
}

#[test]
fn missing_fields_and_type_errors_are_errors_not_panics() {
    assert_eq!(eval("nope == 1", r#"{"a":1}"#), Err(EvalError::Unknown("nope".into())));
    assert_eq!(
        eval("a.b.c", r#"{"a":{"b":{}}}"#),
        Err(EvalError::NoSuchKey("c".into()))
    );
    assert!(matches!(eval(r#"a + "x""#, r#"{"a":1}"#), Err(EvalError::Failed(_))));
    assert!(matches!(eval("a.b.c", r#"{"a":{"b":1}}"#), Err(EvalError::Failed(_))));
    assert!(matches!(eval("a / 0", r#"{"a":1}"#), Err(EvalError::Failed(_))));
    assert!(eval("key.id", r#"{}"#).is_err());
    // An unknown function fails every record: it is refused when the expression compiles.
    assert_eq!(
        Expr::compile("nosuchfn(1)").map(|_| ()).map_err(|e| e.message),
        Err("unknown function `nosuchfn`".to_owned())
    );
    assert!(Expr::compile("math.greatest(1, 2) == 2 && optional.of(1).hasValue() && 'a'.lowerAscii() == 'a'").is_ok());
    assert_eq!(
        compile("a").eval_bool(&rec(r#"{"a":1}"#), &Value::Null),
        Err(EvalError::NotBool("number"))
    );
    assert_eq!(compile("a").eval_bool(&rec(r#"{"a":true}"#), &Value::Null), Ok(true));
    assert_eq!(
        EvalError::Unknown("n".into()).to_string(),
        "`n` is neither a field of the record nor a function"
    );
}

#[test]
fn map_results_convert_back_losslessly() {
    let out = eval(
        r#"{"name": user, "n": n, "f": 1.5, "l": [1, "two", null], "b": true, "bytes": b"hi"}"#,
        r#"{"user":"u1","n":18446744073709551615}"#,
    )
    .expect("evaluates");
    assert_eq!(
        out.to_json_string(),
        r#"{"b":true,"bytes":"aGk=","f":1.5,"l":[1,"two",null],"n":18446744073709551615,"name":"u1"}"#
    );
}

#[test]
fn cel_only_values_take_their_record_form() {
    assert_eq!(eval("5u", "{}"), Ok(Value::Int(5)));
    assert_eq!(eval("18446744073709551615u", "{}"), Ok(Value::UInt(u64::MAX)));
    assert_eq!(eval("type(1)", "{}"), Ok(Value::str("int")));
    assert_eq!(
        eval("{1: 'a', true: 'b', 2u: 'c'}", "{}"),
        Ok(rec(r#"{"1":"a","true":"b","2":"c"}"#))
    );
    assert_eq!(
        eval("{1: 'a', '1': 'b'}", "{}"),
        Err(EvalError::DuplicateKey("1".into()))
    );
    assert_eq!(eval("optional.of(3)", "{}"), Ok(Value::Int(3)));
    assert_eq!(eval("optional.none()", "{}"), Ok(Value::Null));
    assert_eq!(eval("m.?x.orValue(0)", r#"{"m":{}}"#), Ok(Value::Int(0)));
}

#[test]
fn values_round_trip_through_cel() {
    let values = [
        rec(r#"{"a":[1,2.5,"s",null,true,{"b":-4}],"c":{},"d":18446744073709551615,"e":-0.0}"#),
        Value::Bytes(Arc::from(&b"\x00\xffraw"[..])),
        Value::UInt(u64::MAX),
        Value::from(f64::NAN),
        Value::list([Value::Bytes(Arc::from(&b""[..])), Value::Null]),
    ];
    for v in values {
        assert_eq!(from_cel(&to_cel(&v)), Ok(v.clone()));
        assert_eq!(convert::from_val(convert::to_val(&v).as_ref()), Ok(v.clone()));
        // And through an expression that hands the value back.
        assert_eq!(compile("record").eval(&v, &Value::Null), Ok(v.clone()));
    }
    let cel_values = [
        cel::Value::Int(-3),
        cel::Value::UInt(u64::MAX),
        cel::Value::Float(0.25),
        cel::Value::String(Arc::new("s".into())),
        cel::Value::Bytes(Arc::new(vec![1, 2])),
        cel::Value::Bool(false),
        cel::Value::Null,
        cel::Value::List(Arc::new(vec![cel::Value::Int(1), cel::Value::Null])),
    ];
    for v in cel_values {
        let back = from_cel(&v).expect("has a record form");
        assert_eq!(to_cel(&back), v);
    }
}

#[test]
fn compile_errors_name_their_position() {
    let e = Expr::compile("a +* b").expect_err("does not compile");
    assert_eq!(e.position, Some(Position { line: 1, column: 4 }), "{e}");
    let e = Expr::compile(r#"status == "error" &&"#).expect_err("does not compile");
    assert_eq!(e.position, Some(Position { line: 1, column: 21 }), "{e}");
    assert_eq!(e.message, "the expression ends too early, expecting a value");
    let e = Expr::compile(r#"{"a": }"#).expect_err("does not compile");
    assert_eq!(
        e.to_string(),
        "unexpected '}', expecting a value (at line 1, column 7 of the expression)"
    );
    let e = Expr::compile("ab cd").expect_err("does not compile");
    assert_eq!(e.message, "unexpected 'cd', expecting the end of the expression");
    let e = Expr::compile("a ==\n  (").expect_err("does not compile");
    assert_eq!(e.position.map(|p| p.line), Some(2), "{e}");
    assert!(e.to_string().contains("line 2, column"), "{e}");
    let e = Expr::compile("has(a)").expect_err("has() needs a field selection");
    assert!(e.position.is_some(), "{e}");
}

#[test]
fn variables_lists_the_names_read() {
    let e = compile("status == 'x' && record.n > 1 && data.body.x == key.id && l.all(i, i > 0)");
    assert_eq!(
        e.variables().collect::<Vec<_>>(),
        ["data", "i", "key", "l", "record", "status"]
    );
    assert_eq!(
        e.source(),
        "status == 'x' && record.n > 1 && data.body.x == key.id && l.all(i, i > 0)"
    );
}

#[test]
fn one_expr_serves_many_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Expr>();
    let e = compile("n * 2");
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let e = e.clone();
                s.spawn(move || e.eval(&Value::map([("n", Value::Int(i))]), &Value::Null))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic").expect("evaluates"))
            .collect()
    });
    assert_eq!(results, [0, 2, 4, 6].map(Value::Int));
}

#[test]
#[ignore = "a rough timing: cargo test --release -p sluice-expr eval_speed -- --ignored --nocapture"]
fn eval_speed() {
    let mut fields: Vec<(String, Value)> = (0..30).map(|i| (format!("f{i}"), Value::Int(i))).collect();
    fields.push(("status".into(), Value::str("error")));
    let body = (0..20)
        .map(|i| (format!("b{i}"), Value::str(format!("value {i}"))))
        .chain([("x".to_owned(), Value::Int(1))]);
    fields.push(("data".into(), Value::map([("body", Value::map(body))])));
    let record = Value::map(fields);
    for src in [
        "true",
        "1 == 1",
        "status",
        r#"status == "error""#,
        "data.body.x == 1",
        r#"record.status == "error""#,
        r#"{"s": status, "n": f1 + f2}"#,
        "size(data.body) > 3",
    ] {
        if std::env::var("SRC").is_ok_and(|only| only != src) {
            continue;
        }
        let e = compile(src);
        let n = 100_000;
        let start = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(e.eval(&record, &Value::Null).expect("evaluates"));
        }
        println!("{src:40} {:>8.0} ns/eval", start.elapsed().as_nanos() as f64 / n as f64);
    }
}
