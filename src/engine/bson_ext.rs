//! The two BSON idioms every part of the engine repeats.

use mongodb::bson::{Bson, Document};

/// An integer stored as int64 or int32: servers, shells and drivers write either, depending on
/// the value and the client, so a reader must take both.
pub fn as_int(value: &Bson) -> Option<i64> {
    value.as_i64().or_else(|| value.as_i32().map(i64::from))
}

/// `d[key]` as an integer (see [`as_int`]), 0 when absent or not an integer.
pub fn int_field(d: &Document, key: &str) -> i64 {
    d.get(key).and_then(as_int).unwrap_or(0)
}

/// The argument of `$unset` for `fields`: `{field: "", ...}` (the value is ignored).
pub fn unset<S: AsRef<str>>(fields: impl IntoIterator<Item = S>) -> Document {
    fields
        .into_iter()
        .map(|f| (f.as_ref().to_string(), Bson::String(String::new())))
        .collect()
}
