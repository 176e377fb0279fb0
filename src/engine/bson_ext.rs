//! The BSON idioms every part of the engine repeats.

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

/// A value (an `_id`, most often) as an operator reads it in a log line or a message: an
/// ObjectId as its hex digits, a string in quotes, a number as itself, anything else as relaxed
/// extended JSON; `none` when there is none (no batch written yet). Never Rust's `Debug` form
/// (`Some(ObjectId("..."))`).
pub fn show(value: Option<&Bson>) -> String {
    match value {
        None => "none".into(),
        Some(Bson::ObjectId(id)) => id.to_hex(),
        Some(Bson::String(s)) => format!("{s:?}"),
        Some(Bson::Int32(n)) => n.to_string(),
        Some(Bson::Int64(n)) => n.to_string(),
        Some(Bson::Double(n)) => n.to_string(),
        Some(other) => other.clone().into_relaxed_extjson().to_string(),
    }
}

/// The counts of a document of `{reason: count}` as `string 1, negative 2`.
pub fn show_counts(counts: &Document) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k} {}", as_int(v).unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The argument of `$unset` for `fields`: `{field: "", ...}` (the value is ignored).
pub fn unset<S: AsRef<str>>(fields: impl IntoIterator<Item = S>) -> Document {
    fields
        .into_iter()
        .map(|f| (f.as_ref().to_string(), Bson::String(String::new())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId};

    #[test]
    fn values_read_as_an_operator_writes_them() {
        let id = ObjectId::parse_str("65000000756e9500000000c8").unwrap();
        assert_eq!(show(Some(&Bson::ObjectId(id))), "65000000756e9500000000c8");
        assert_eq!(show(Some(&Bson::String("u9".into()))), "\"u9\"");
        assert_eq!(show(Some(&Bson::Int64(7))), "7");
        assert_eq!(show(Some(&Bson::Document(doc! { "k": 1 }))), r#"{"k":1}"#);
        assert_eq!(show(None), "none");
        assert_eq!(
            show_counts(&doc! { "string": 1_i64, "negative": 2 }),
            "string 1, negative 2"
        );
    }
}
