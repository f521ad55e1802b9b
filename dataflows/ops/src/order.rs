//! The order in which `latest` and the `min`/`max` aggregates compare field values.
//!
//! `Value`'s own `Ord` ranks by variant first (every `Int` before every `Float`), which is
//! right for arranging data and wrong for "the greatest price" when some prices are written
//! `3` and others `2.5`. Here numbers compare by their numeric value, exactly (no rounding of
//! large integers through `f64`), and everything else as `Value` orders it. Numbers that are
//! equal in value (`1` and `1.0`) fall back to `Value`'s order, so the order stays total and
//! results never depend on arrival order.

use std::cmp::Ordering;

use sluice_runtime::Value;
use sluice_runtime::value::F64;

/// Compares two values: numerically when both are numbers, else by `Value`'s order.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    let numeric = match (number(a), number(b)) {
        (Some(Num::Int(x)), Some(Num::Int(y))) => x.cmp(&y),
        (Some(Num::Float(x)), Some(Num::Float(y))) => x.total_cmp(&y),
        (Some(Num::Int(i)), Some(Num::Float(f))) => int_float(i, f),
        (Some(Num::Float(f)), Some(Num::Int(i))) => int_float(i, f).reverse(),
        _ => Ordering::Equal,
    };
    numeric.then_with(|| a.cmp(b))
}

enum Num {
    Int(i128),
    Float(f64),
}

fn number(v: &Value) -> Option<Num> {
    match v {
        Value::Int(i) => Some(Num::Int(i128::from(*i))),
        Value::UInt(u) => Some(Num::Int(i128::from(*u))),
        Value::Float(F64(f)) => Some(Num::Float(*f)),
        _ => None,
    }
}

/// Compares an integer with a float exactly.
fn int_float(i: i128, f: f64) -> Ordering {
    // Far beyond any `i64`/`u64` (and NaN, which `total_cmp` puts at the ends by its sign).
    const FAR: f64 = 1e30;
    if f.is_nan() {
        return if f.is_sign_negative() {
            Ordering::Greater
        } else {
            Ordering::Less
        };
    }
    if f >= FAR {
        return Ordering::Less;
    }
    if f <= -FAR {
        return Ordering::Greater;
    }
    let floor = f.floor();
    // `floor` is integral and small enough to be exact in an `i128`.
    match i.cmp(&(floor as i128)) {
        Ordering::Equal if f > floor => Ordering::Less,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_value_across_representations() {
        let less = |a: Value, b: Value| {
            assert_eq!(compare(&a, &b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare(&b, &a), Ordering::Greater, "{b} > {a}");
        };
        less(Value::from(2.5), Value::Int(3));
        less(Value::Int(2), Value::from(2.5));
        less(Value::Int(-3), Value::from(-2.5));
        less(Value::Int(i64::MAX), Value::UInt(u64::MAX));
        less(Value::from(-1e300), Value::Int(i64::MIN));
        less(Value::UInt(u64::MAX), Value::from(1e300));
        // 2^53 + 1 is not a float; rounding through f64 would call them equal.
        less(Value::from(9007199254740992.0), Value::Int(9007199254740993));
        // Equal values fall back to `Value`'s order: `Int` before `Float`.
        less(Value::Int(1), Value::from(1.0));
        // Non-numbers keep `Value`'s order.
        less(Value::Int(1_000), Value::str("a"));
        less(Value::Null, Value::from(-1e300));
        assert_eq!(compare(&Value::str("b"), &Value::str("b")), Ordering::Equal);
    }
}
