//! `key_by`: sets each row's key from fields of its record.

use sluice_runtime::record::key_from_fields;
use sluice_runtime::{DeadLetter, DeadLetters, Row, Rows};

use crate::dead_letter;
use crate::map::split;

/// Sets the key of each row to `{field: value, …}` of the given field paths.
///
/// The key format is the engine's (`key_from_fields`), so keys made here equal keys made by
/// a source's `key`. A row missing a key field is dead-lettered with the field's name.
pub fn key_by<'s>(rows: Rows<'s>, fields: &[Vec<String>], name: &str) -> (Rows<'s>, DeadLetters<'s>) {
    let fields = fields.to_vec();
    let name = name.to_owned();
    let results = rows.map(move |row| -> Result<Row, DeadLetter> {
        match key_from_fields(&row.val, &fields) {
            Ok(key) => Ok(Row { key, ..row }),
            Err(reason) => Err(dead_letter(&name, &row, reason)),
        }
    });
    split(results)
}
