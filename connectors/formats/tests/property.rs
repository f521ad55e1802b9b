//! Seeded random items, written as DynamoDB JSON with random escapes and whitespace, must
//! decode to the values they were generated from: as items, and as images of change records
//! through both the eager decoder and the lazy parser.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_formats::{StreamRecordRef, decode_item, decode_stream_record};
use sluice_runtime::Value;
use sluice_runtime::value::base64_encode;

const CASES: usize = 2000;

struct Gen {
    rng: SmallRng,
}

/// One generated attribute: its name, its typed JSON text, its value.
struct Attribute {
    name: String,
    text: String,
    value: Value,
}

impl Gen {
    fn ws(&mut self) -> &'static str {
        ["", "", "", "", " ", "\n", "\t", "\r\n  "][self.rng.random_range(0..8)]
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// Random text mixing ASCII, quotes, backslashes, controls and non-BMP characters.
    fn text(&mut self, max: usize) -> String {
        const POOL: &[char] = &[
            'a',
            'Z',
            '0',
            ' ',
            '+',
            '"',
            '\\',
            '/',
            '\n',
            '\t',
            '\u{1}',
            '\u{1f}',
            '\u{7f}',
            'é',
            '中',
            '😀',
            '\u{10ffff}',
            '\u{fffd}',
        ];
        (0..self.rng.random_range(0..=max))
            .map(|_| POOL[self.rng.random_range(0..POOL.len())])
            .collect()
    }

    /// `s` as a JSON string, escaping characters in randomly chosen (valid) ways.
    fn quoted(&mut self, s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            let hex = |out: &mut String, unit: u32, upper: bool| {
                if upper {
                    write!(out, "\\u{unit:04X}").unwrap();
                } else {
                    write!(out, "\\u{unit:04x}").unwrap();
                }
            };
            let upper = self.chance(0.5);
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' if self.chance(0.7) => out.push_str(match c {
                    '\u{8}' => "\\b",
                    '\u{c}' => "\\f",
                    '\n' => "\\n",
                    '\r' => "\\r",
                    _ => "\\t",
                }),
                '/' if self.chance(0.3) => out.push_str("\\/"),
                c if (c as u32) < 0x20 || self.chance(0.15) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        hex(&mut out, u32::from(*unit), upper);
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// A DynamoDB number's text and the value it must decode to.
    fn number(&mut self) -> (String, Value) {
        match self.rng.random_range(0..7) {
            0 => {
                let n: i64 = self.rng.random();
                (n.to_string(), Value::Int(n))
            }
            1 => {
                let n: i64 = self.rng.random_range(-1000..1000);
                (n.to_string(), Value::Int(n))
            }
            2 => {
                let n = self.rng.random_range((1u64 << 63)..=u64::MAX);
                (n.to_string(), Value::UInt(n))
            }
            3 => {
                let text = format!(
                    "{}.{}",
                    self.rng.random_range(-1000i64..1000),
                    self.rng.random_range(0..100_000u32)
                );
                let value = Value::from(text.parse::<f64>().unwrap());
                (text, value)
            }
            4 => {
                let text = format!(
                    "{}{}{}",
                    self.rng.random_range(1..10_000u32),
                    ["e", "E", "e+", "e-"][self.rng.random_range(0..4)],
                    self.rng.random_range(0..30u32)
                );
                let value = Value::from(text.parse::<f64>().unwrap());
                (text, value)
            }
            5 => {
                // 38 digits: beyond every integer type, so a float.
                let mut text = self.rng.random_range(1..10u32).to_string();
                for _ in 0..37 {
                    text.push(char::from(b'0' + self.rng.random_range(0..10u8)));
                }
                let value = Value::from(text.parse::<f64>().unwrap());
                (text, value)
            }
            _ => ("-0".to_owned(), Value::Int(0)),
        }
    }

    fn binary(&mut self) -> (String, Value) {
        let bytes: Vec<u8> = (0..self.rng.random_range(0..40)).map(|_| self.rng.random()).collect();
        (base64_encode(&bytes), Value::Bytes(Arc::from(bytes)))
    }

    /// `[a, b, …]` with random whitespace around the elements.
    fn array(&mut self, items: &[String]) -> String {
        let mut out = String::from("[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let (before, after) = (self.ws(), self.ws());
            write!(out, "{before}{item}{after}").unwrap();
        }
        out.push(']');
        out
    }

    /// A typed value's text (tag possibly escaped, random whitespace) and its value.
    fn typed(&mut self, depth: usize) -> (String, Value) {
        let kinds = if depth >= 3 { 9 } else { 11 };
        let (tag, inner, value) = match self.rng.random_range(0..kinds) {
            0 => {
                let s = self.text(8);
                ("S", self.quoted(&s), Value::str(s))
            }
            1 => {
                let (n, value) = self.number();
                ("N", self.quoted(&n), value)
            }
            2 => {
                let (b, value) = self.binary();
                ("B", self.quoted(&b), value)
            }
            3 => {
                let b = self.chance(0.5);
                ("BOOL", b.to_string(), Value::Bool(b))
            }
            4 => ("NULL", "true".to_owned(), Value::Null),
            5 => {
                let strings: Vec<String> = (0..self.rng.random_range(0..4)).map(|_| self.text(4)).collect();
                let texts: Vec<String> = strings.iter().map(|s| self.quoted(s)).collect();
                (
                    "SS",
                    self.array(&texts),
                    Value::list(strings.into_iter().map(Value::str)),
                )
            }
            6 => {
                let (texts, values): (Vec<String>, Vec<Value>) = (0..self.rng.random_range(0..4))
                    .map(|_| {
                        let (n, value) = self.number();
                        (self.quoted(&n), value)
                    })
                    .unzip();
                ("NS", self.array(&texts), Value::list(values))
            }
            7 => {
                let (texts, values): (Vec<String>, Vec<Value>) = (0..self.rng.random_range(0..4))
                    .map(|_| {
                        let (b, value) = self.binary();
                        (self.quoted(&b), value)
                    })
                    .unzip();
                ("BS", self.array(&texts), Value::list(values))
            }
            8 => {
                let s = self.text(2);
                ("S", self.quoted(&s), Value::str(s))
            }
            9 => {
                let (text, value, _) = self.map(depth + 1, 4);
                ("M", text, value)
            }
            _ => {
                let (texts, values): (Vec<String>, Vec<Value>) =
                    (0..self.rng.random_range(0..4)).map(|_| self.typed(depth + 1)).unzip();
                ("L", self.array(&texts), Value::list(values))
            }
        };
        let tag = if self.chance(0.1) {
            self.quoted(tag)
        } else {
            format!("\"{tag}\"")
        };
        let (a, b, c, d) = (self.ws(), self.ws(), self.ws(), self.ws());
        (format!("{{{a}{tag}{b}:{c}{inner}{d}}}"), value)
    }

    /// An object of name → typed value: its text, its value, and its attributes.
    fn map(&mut self, depth: usize, max: usize) -> (String, Value, Vec<Attribute>) {
        let mut attributes = Vec::new();
        for i in 0..self.rng.random_range(0..=max) {
            // `#` never occurs in `text`, so the index keeps names unique.
            let name = format!("{}#{i}", self.text(3));
            let (text, value) = self.typed(depth);
            attributes.push(Attribute { name, text, value });
        }
        let mut text = String::from("{");
        for (i, attribute) in attributes.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let name = self.quoted(&attribute.name);
            let (a, b, c, d) = (self.ws(), self.ws(), self.ws(), self.ws());
            write!(text, "{a}{name}{b}:{c}{}{d}", attribute.text).unwrap();
        }
        text.push('}');
        let value = Value::map(attributes.iter().map(|a| (a.name.as_str(), a.value.clone())));
        (text, value, attributes)
    }

    /// Any JSON value, for fields the decoders must skip.
    fn junk(&mut self, depth: usize) -> String {
        match self.rng.random_range(0..if depth > 2 { 4 } else { 6 }) {
            0 => {
                let s = self.text(6);
                self.quoted(&s)
            }
            1 => self.number().0,
            2 => ["true", "false", "null"][self.rng.random_range(0..3)].to_owned(),
            3 => "\"}]\\\"{[\"".to_owned(),
            4 => {
                let items: Vec<String> = (0..self.rng.random_range(0..4)).map(|_| self.junk(depth + 1)).collect();
                self.array(&items)
            }
            _ => {
                let members: Vec<String> = (0..self.rng.random_range(0..4))
                    .map(|i| {
                        let key = format!("{}{i}", self.text(3));
                        let key = self.quoted(&key);
                        let value = self.junk(depth + 1);
                        format!("{key}{}:{}{value}", self.ws(), self.ws())
                    })
                    .collect();
                format!("{{{}}}", members.join(","))
            }
        }
    }
}

/// `members` as a JSON object in random order with random whitespace.
fn object(g: &mut Gen, mut members: Vec<(&str, String)>) -> String {
    for i in (1..members.len()).rev() {
        members.swap(i, g.rng.random_range(0..=i));
    }
    let parts: Vec<String> = members
        .into_iter()
        .map(|(key, value)| {
            let key = g.quoted(key);
            let (a, b, c, d) = (g.ws(), g.ws(), g.ws(), g.ws());
            format!("{a}{key}{b}:{c}{value}{d}")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

#[test]
fn random_items_decode_to_their_values_as_items_and_as_images() {
    let mut g = Gen {
        rng: SmallRng::seed_from_u64(0x5eed),
    };
    for case in 0..CASES {
        let (old_text, old, old_attributes) = g.map(0, 20);
        let (new_text, new, new_attributes) = g.map(0, 20);
        let (keys_text, keys, _) = g.map(2, 2);

        assert_eq!(
            decode_item(old_text.as_bytes()).ok(),
            Some(old.clone()),
            "case {case}: {old_text}"
        );
        let wrapped = format!("{}{{{}\"Item\"{}:{old_text}}}", g.ws(), g.ws(), g.ws());
        assert_eq!(
            decode_item(wrapped.as_bytes()).ok(),
            Some(old.clone()),
            "case {case}: {wrapped}"
        );

        let event = ["INSERT", "MODIFY", "REMOVE"][g.rng.random_range(0..3)];
        let with_old = g.chance(0.8);
        let with_new = g.chance(0.8);
        let millis: i64 = g.rng.random_range(1_600_000_000_000..1_800_000_000_000);
        let sequence = g.rng.random_range(0..u64::MAX).to_string();
        let mut dynamodb = vec![
            ("Keys", keys_text.clone()),
            ("ApproximateCreationDateTime", millis.to_string()),
            ("SequenceNumber", format!("\"{sequence}\"")),
            ("SizeBytes", g.rng.random_range(1..400_000).to_string()),
            ("StreamViewType", "\"NEW_AND_OLD_IMAGES\"".to_owned()),
            ("unknownInside", g.junk(0)),
        ];
        if with_old {
            dynamodb.push(("OldImage", old_text.clone()));
        }
        if with_new {
            dynamodb.push(("NewImage", new_text.clone()));
        }
        let dynamodb = object(&mut g, dynamodb);
        let unknown = g.junk(0);
        let record = object(
            &mut g,
            vec![
                ("eventID", format!("\"{case}\"")),
                ("eventName", format!("\"{event}\"")),
                ("dynamodb", dynamodb),
                ("tableName", "\"Accounts\"".to_owned()),
                ("awsRegion", "\"us-east-1\"".to_owned()),
                ("userIdentity", "null".to_owned()),
                ("unknown", unknown),
            ],
        );
        let expected = Value::map([
            ("eventName", Value::str(event)),
            ("eventID", Value::str(case.to_string())),
            ("tableName", Value::str("Accounts")),
            ("keys", keys),
            ("old", if with_old { old.clone() } else { Value::Null }),
            ("new", if with_new { new.clone() } else { Value::Null }),
            ("sequenceNumber", Value::str(sequence)),
            ("approximateCreationTime", Value::Int(millis)),
        ]);

        let decoded = decode_stream_record(record.as_bytes()).unwrap_or_else(|e| panic!("case {case}: {e}: {record}"));
        assert_eq!(decoded, expected, "case {case}: {record}");
        let parsed = StreamRecordRef::parse(record.as_bytes()).unwrap();
        assert_eq!(parsed.event_name(), event);
        assert_eq!(parsed.to_value().ok(), Some(expected), "case {case}");

        for (image, attributes) in [
            (parsed.old_image(), &old_attributes),
            (parsed.new_image(), &new_attributes),
        ] {
            let Some(image) = image else { continue };
            for attribute in attributes {
                assert_eq!(image.raw(&attribute.name), Some(attribute.text.as_str()), "case {case}");
                assert_eq!(
                    image.get(&attribute.name).ok(),
                    Some(Some(attribute.value.clone())),
                    "case {case}"
                );
            }
            assert_eq!(image.raw("#"), None);
        }
        if let (Some(first), Some(image)) = (old_attributes.first(), parsed.old_image()) {
            let projected = parsed.to_value_projected(&[first.name.as_str()]).unwrap();
            assert_eq!(
                projected.get("old"),
                Some(&Value::map([(first.name.as_str(), first.value.clone())])),
                "case {case}"
            );
            assert_eq!(image.to_value().ok().as_ref(), decoded.get("old"));
        }
    }
}
