//! Exact halving of money amounts for the `withdrawableBalance` backfill.
//!
//! The backfill stores 50% of `affiliateEarnings`. Binary floating point would
//! let cents drift, so every amount is turned into an exact decimal first,
//! halved exactly, and rounded to the cent with round-half-to-even:
//!
//! - Int32 / Int64: halved and stored as a Double (exact for |n| < 2^52).
//! - Double: the shortest decimal that round-trips (what `{}` prints) is the
//!   amount, so `123.45` means exactly 123.45; the rounded half is stored as the
//!   double nearest to it.
//! - Decimal128: the rounded half is stored as a Decimal128 with exponent -2.
//! - Missing, null and numeric zero need no balance; negatives, NaN,
//!   infinities, amounts above 10^15 and non-numeric types are never converted.
//!
//! Decimal128 values are read and written through bson's string conversion
//! (`Display` / `FromStr`), which is exact: the spec's string form keeps every
//! digit of the coefficient and the exponent.

use bson::{Bson, Decimal128};

/// Largest coefficient a canonical decimal128 can hold: 10^34 - 1.
const MAX_COEFFICIENT: u128 = 9_999_999_999_999_999_999_999_999_999_999_999;
/// Smallest exponent decimal128 can represent.
const MIN_EXPONENT: i32 = -6176;
/// Largest exponent decimal128 can represent.
const MAX_EXPONENT: i32 = 6111;
/// Amounts above 10^this are rejected as out of range.
const MAX_AMOUNT_POW10: i64 = 15;
/// Exponent of a cent.
const CENT_EXPONENT: i32 = -2;

/// What an `affiliateEarnings` value means for the backfill.
#[derive(Debug, Clone, PartialEq)]
pub enum Earnings {
    /// Missing, null, or numerically zero (any numeric type, incl. -0.0 and Decimal128 zero).
    None,
    /// A valid positive amount; `half` is the balance to store.
    Half(Bson),
    /// Anything else, never converted: the reason says why (e.g. "string", "negative", "NaN",
    /// "infinite", "boolean", "object", "array", "out of range", "Decimal128 NaN").
    Invalid(&'static str),
}

/// A finite decimal: value = (-1)^negative * coefficient * 10^exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dec {
    /// Sign; a zero coefficient may carry either sign.
    pub negative: bool,
    /// Unsigned integer significand.
    pub coefficient: u128,
    /// Power of ten the coefficient is scaled by.
    pub exponent: i32,
}

/// A decoded decimal128 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodedDecimal {
    /// A finite number (non-canonical coefficients decode as zero).
    Finite(Dec),
    /// Quiet or signalling NaN.
    NaN,
    /// Positive or negative infinity.
    Infinite {
        /// Whether this is negative infinity.
        negative: bool,
    },
}

/// Classifies an `affiliateEarnings` value and, when valid, computes the half to store.
pub fn classify(value: Option<&Bson>) -> Earnings {
    let value = match value {
        None | Some(Bson::Null) => return Earnings::None,
        Some(v) => v,
    };
    match value {
        Bson::Int32(n) => classify_integer(i64::from(*n)),
        Bson::Int64(n) => classify_integer(*n),
        Bson::Double(x) => classify_double(*x),
        Bson::Decimal128(d) => classify_decimal128(d),
        other => Earnings::Invalid(type_name(other)),
    }
}

/// Decodes a decimal128 through its exact string form (`-123.45`, `1.2E+5`, `NaN`, ...).
/// Non-canonical coefficients read as zero, as the spec says (and bson prints them).
pub fn decode_decimal128(d: &Decimal128) -> DecodedDecimal {
    let text = d.to_string();
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    if unsigned.contains("NaN") {
        return DecodedDecimal::NaN;
    }
    if unsigned == "Infinity" {
        return DecodedDecimal::Infinite { negative };
    }
    let (mantissa, exponent) = match unsigned.split_once(['E', 'e']) {
        Some((mantissa, exponent)) => (mantissa, exponent),
        None => (unsigned, "0"),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let coefficient: u128 = format!("{int_part}{frac_part}")
        .parse()
        .expect("bson prints a decimal128's coefficient as digits");
    let exponent: i32 = exponent
        .trim_start_matches('+')
        .parse()
        .expect("bson prints a decimal128's exponent as an integer");
    DecodedDecimal::Finite(Dec {
        negative,
        coefficient,
        // At most 34 fractional digits, so this stays within the exponent range.
        exponent: exponent - frac_part.len() as i32,
    })
}

/// Encodes a finite decimal canonically; `None` if it needs more than 34 digits or the
/// exponent is outside -6176..=6111 (bson's parser would round or clamp it instead).
pub fn encode_decimal128(d: &Dec) -> Option<Decimal128> {
    if d.coefficient > MAX_COEFFICIENT || !(MIN_EXPONENT..=MAX_EXPONENT).contains(&d.exponent) {
        return None;
    }
    let sign = if d.negative { "-" } else { "" };
    format!("{sign}{}E{}", d.coefficient, d.exponent)
        .parse()
        .ok()
}

fn classify_integer(n: i64) -> Earnings {
    if n == 0 {
        return Earnings::None;
    }
    if n < 0 {
        return Earnings::Invalid("negative");
    }
    half_as_double(&Dec {
        negative: false,
        coefficient: u128::from(n.unsigned_abs()),
        exponent: 0,
    })
}

fn classify_double(x: f64) -> Earnings {
    if x.is_nan() {
        return Earnings::Invalid("NaN");
    }
    if x.is_infinite() {
        return Earnings::Invalid("infinite");
    }
    if x == 0.0 {
        return Earnings::None;
    }
    if x < 0.0 {
        return Earnings::Invalid("negative");
    }
    match shortest_decimal(x) {
        Some(d) => half_as_double(&d),
        None => Earnings::Invalid("out of range"),
    }
}

fn classify_decimal128(d: &Decimal128) -> Earnings {
    let d = match decode_decimal128(d) {
        DecodedDecimal::NaN => return Earnings::Invalid("Decimal128 NaN"),
        DecodedDecimal::Infinite { .. } => return Earnings::Invalid("infinite"),
        DecodedDecimal::Finite(d) => d,
    };
    if d.coefficient == 0 {
        return Earnings::None;
    }
    if d.negative {
        return Earnings::Invalid("negative");
    }
    let half = half_in_cents(&d).and_then(|cents| {
        encode_decimal128(&Dec {
            negative: false,
            coefficient: cents,
            exponent: CENT_EXPONENT,
        })
    });
    match half {
        Some(h) => Earnings::Half(Bson::Decimal128(h)),
        None => Earnings::Invalid("out of range"),
    }
}

fn half_as_double(d: &Dec) -> Earnings {
    match half_in_cents(d) {
        // Parsing the decimal string yields the nearest double; going through
        // `cents as f64 / 100.0` would round twice once cents exceed 2^53.
        Some(cents) => match format!("{}.{:02}", cents / 100, cents % 100).parse::<f64>() {
            Ok(x) => Earnings::Half(Bson::Double(x)),
            Err(_) => Earnings::Invalid("out of range"),
        },
        None => Earnings::Invalid("out of range"),
    }
}

/// Half of a non-negative decimal, in whole cents, rounded half-to-even;
/// `None` above 10^15.
fn half_in_cents(d: &Dec) -> Option<u128> {
    if exceeds_max_amount(d) {
        return None;
    }
    // value / 2 * 100 = 5 * coefficient * 10^(exponent + 1)
    let scaled = d.coefficient.checked_mul(5)?;
    let shift = i64::from(d.exponent) + 1;
    if shift >= 0 {
        // Bounded by 50 * 10^15 thanks to the range check.
        return scaled.checked_mul(10u128.checked_pow(u32::try_from(shift).ok()?)?);
    }
    let digits_dropped = shift.unsigned_abs();
    if digits_dropped > 38 {
        // 10^38 already exceeds twice any 34-digit coefficient times 5: rounds to 0.
        return Some(0);
    }
    let divisor = 10u128.pow(digits_dropped as u32);
    let (quotient, remainder) = (scaled / divisor, scaled % divisor);
    let half_divisor = divisor / 2;
    let round_up = remainder > half_divisor || (remainder == half_divisor && quotient % 2 == 1);
    Some(quotient + u128::from(round_up))
}

/// Whether a non-negative decimal is greater than 10^15.
fn exceeds_max_amount(d: &Dec) -> bool {
    if d.coefficient == 0 {
        return false;
    }
    let digits = i64::from(d.coefficient.ilog10()) + 1;
    // The value lies in [10^(digits-1+exponent), 10^(digits+exponent)).
    let magnitude = digits - 1 + i64::from(d.exponent);
    match magnitude.cmp(&MAX_AMOUNT_POW10) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => d.coefficient != 10u128.pow((digits - 1) as u32),
    }
}

/// The shortest decimal that round-trips to `x` (finite, non-negative).
fn shortest_decimal(x: f64) -> Option<Dec> {
    // `{:e}` prints the shortest round-tripping digits, e.g. "1.2345e2" or "5e-324".
    let formatted = format!("{x:e}");
    let (mantissa, exponent) = formatted.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let coefficient: u128 = format!("{int_part}{frac_part}").parse().ok()?;
    Some(Dec {
        negative: false,
        coefficient,
        exponent: exponent - i32::try_from(frac_part.len()).ok()?,
    })
}

/// MongoDB's `$type` alias for a non-numeric BSON value.
fn type_name(value: &Bson) -> &'static str {
    match value {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Array(_) => "array",
        Bson::Document(_) => "object",
        Bson::Boolean(_) => "boolean",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Int64(_) => "long",
        Bson::Timestamp(_) => "timestamp",
        Bson::Binary(_) => "binData",
        Bson::ObjectId(_) => "objectId",
        Bson::DateTime(_) => "date",
        Bson::Symbol(_) => "symbol",
        Bson::Decimal128(_) => "decimal",
        Bson::Undefined => "undefined",
        Bson::MaxKey => "maxKey",
        Bson::MinKey => "minKey",
        Bson::DbPointer(_) => "dbPointer",
    }
}

#[cfg(test)]
#[path = "money_tests.rs"]
mod tests;
