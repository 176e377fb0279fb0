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
//! The Decimal128 codec (IEEE 754-2008 decimal128, binary integer decimal
//! encoding) is implemented here because bson 2.x only exposes raw bytes and
//! string conversion.

use bson::{Bson, Decimal128};

/// Largest coefficient a canonical decimal128 can hold: 10^34 - 1.
const MAX_COEFFICIENT: u128 = 9_999_999_999_999_999_999_999_999_999_999_999;
/// Stored exponent = exponent + bias.
const EXPONENT_BIAS: i32 = 6176;
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

/// Decodes decimal128 from the little-endian bytes that `Decimal128::bytes()` returns.
pub fn decode_decimal128(d: &Decimal128) -> DecodedDecimal {
    let bits = u128::from_le_bytes(d.bytes());
    let negative = bits >> 127 == 1;
    match (bits >> 122) & 0b1_1111 {
        0b1_1111 => return DecodedDecimal::NaN,
        0b1_1110 => return DecodedDecimal::Infinite { negative },
        _ => {}
    }
    let (biased_exponent, coefficient) = if (bits >> 125) & 0b11 == 0b11 {
        // Large-coefficient form: the implied "100" prefix makes every coefficient
        // exceed 10^34 - 1, which the spec says to read as zero.
        ((bits >> 111) & 0x3FFF, 0)
    } else {
        let raw = bits & ((1u128 << 113) - 1);
        let coefficient = if raw > MAX_COEFFICIENT { 0 } else { raw };
        ((bits >> 113) & 0x3FFF, coefficient)
    };
    DecodedDecimal::Finite(Dec {
        negative,
        coefficient,
        // 14 bits always fit an i32.
        exponent: biased_exponent as i32 - EXPONENT_BIAS,
    })
}

/// Encodes a finite decimal canonically; `None` if it needs more than 34 digits or the
/// exponent is outside -6176..=6111.
pub fn encode_decimal128(d: &Dec) -> Option<Decimal128> {
    if d.coefficient > MAX_COEFFICIENT || !(MIN_EXPONENT..=MAX_EXPONENT).contains(&d.exponent) {
        return None;
    }
    // Canonical coefficients fit in 113 bits, so the normal form always applies.
    let biased = u128::from((d.exponent + EXPONENT_BIAS).unsigned_abs());
    let bits = (u128::from(d.negative) << 127) | (biased << 113) | d.coefficient;
    Some(Decimal128::from_bytes(bits.to_le_bytes()))
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
mod tests {
    use super::*;
    use bson::doc;
    use std::str::FromStr;

    fn dec128(s: &str) -> Decimal128 {
        Decimal128::from_str(s).expect("valid decimal128 literal")
    }

    fn half(value: Bson) -> Bson {
        match classify(Some(&value)) {
            Earnings::Half(h) => h,
            other => panic!("{value:?} should halve, got {other:?}"),
        }
    }

    fn half_double(value: Bson) -> f64 {
        match half(value.clone()) {
            Bson::Double(x) => x,
            other => panic!("{value:?} should halve to a double, got {other:?}"),
        }
    }

    fn invalid_reason(value: Bson) -> &'static str {
        match classify(Some(&value)) {
            Earnings::Invalid(reason) => reason,
            other => panic!("{value:?} should be invalid, got {other:?}"),
        }
    }

    fn high_low(d: Decimal128) -> (u64, u64) {
        let bits = u128::from_le_bytes(d.bytes());
        ((bits >> 64) as u64, bits as u64)
    }

    fn dec(negative: bool, coefficient: u128, exponent: i32) -> Dec {
        Dec {
            negative,
            coefficient,
            exponent,
        }
    }

    /// splitmix64, so the cross-check below covers many values reproducibly.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn double_halves_to_even_cent() {
        assert_eq!(half_double(Bson::Double(123.45)), 61.72);
        assert_eq!(half_double(Bson::Double(123.47)), 61.74);
        assert_eq!(half_double(Bson::Double(0.01)), 0.0);
        assert_eq!(half_double(Bson::Double(0.03)), 0.02);
        assert_eq!(half_double(Bson::Double(0.05)), 0.02);
        assert_eq!(half_double(Bson::Double(0.07)), 0.04);
        assert_eq!(half_double(Bson::Double(101.0)), 50.5);
        assert_eq!(half_double(Bson::Double(10.005)), 5.0);
        assert_eq!(half_double(Bson::Double(7.0)), 3.5);
        assert_eq!(half_double(Bson::Double(4999.99)), 2500.0);
    }

    #[test]
    fn double_uses_shortest_decimal_not_binary_value() {
        // 123.45 is stored as 123.4500000000000028..., whose half would round up to 61.73.
        assert_eq!(format!("{:.20}", 123.45_f64), "123.45000000000000284217");
        assert_eq!(half_double(Bson::Double(123.45)), 61.72);
        // 0.03 is stored as 0.0299999999999999988..., whose half would round down to 0.01.
        assert_eq!(half_double(Bson::Double(0.03)), 0.02);
    }

    #[test]
    fn double_half_is_nearest_double_to_decimal_result() {
        assert_eq!(
            half_double(Bson::Double(999_999_999_999_999.9)),
            "499999999999999.95".parse::<f64>().unwrap()
        );
        assert_eq!(half_double(Bson::Double(1e15)), 5e14);
    }

    #[test]
    fn tiny_positive_amounts_round_to_zero_cents() {
        assert_eq!(half(Bson::Double(5e-324)), Bson::Double(0.0));
        assert_eq!(half(Bson::Double(0.009)), Bson::Double(0.0));
        assert_eq!(
            half(Bson::Decimal128(dec128("1E-6000"))),
            Bson::Decimal128(dec128("0.00"))
        );
    }

    #[test]
    fn integer_inputs_yield_double_balance() {
        assert_eq!(half(Bson::Int32(7)), Bson::Double(3.5));
        assert_eq!(half(Bson::Int32(101)), Bson::Double(50.5));
        assert_eq!(half(Bson::Int32(1)), Bson::Double(0.5));
        assert_eq!(half(Bson::Int32(i32::MAX)), Bson::Double(1_073_741_823.5));
        assert_eq!(half(Bson::Int64(250)), Bson::Double(125.0));
        assert_eq!(
            half(Bson::Int64(999_999_999_999_999)),
            Bson::Double(499_999_999_999_999.5)
        );
        assert_eq!(half(Bson::Int64(1_000_000_000_000_000)), Bson::Double(5e14));
    }

    #[test]
    fn int64_above_10_pow_15_is_out_of_range() {
        assert_eq!(
            invalid_reason(Bson::Int64(1_000_000_000_000_001)),
            "out of range"
        );
        assert_eq!(invalid_reason(Bson::Int64(i64::MAX)), "out of range");
    }

    #[test]
    fn decimal128_input_yields_decimal128_balance() {
        for (input, expected) in [
            ("123.45", "61.72"),
            ("123.47", "61.74"),
            ("0.01", "0.00"),
            ("0.03", "0.02"),
            ("101", "50.50"),
            ("10.005", "5.00"),
            ("7", "3.50"),
            ("0.015", "0.01"),
            ("1E+3", "500.00"),
            ("1E+15", "500000000000000.00"),
            ("0.01000000000000000000000000000001", "0.01"),
            ("2.500000000000000000000000000000001", "1.25"),
        ] {
            let h = half(Bson::Decimal128(dec128(input)));
            let Bson::Decimal128(d) = h else {
                panic!("{input} should halve to a Decimal128, got {h:?}");
            };
            assert_eq!(d.to_string(), expected, "half of {input}");
            let DecodedDecimal::Finite(decoded) = decode_decimal128(&d) else {
                panic!("half of {input} should be finite");
            };
            assert_eq!(decoded.exponent, -2, "half of {input}");
            assert!(!decoded.negative);
        }
    }

    #[test]
    fn missing_null_and_zero_need_no_balance() {
        assert_eq!(classify(None), Earnings::None);
        assert_eq!(classify(Some(&Bson::Null)), Earnings::None);
        for zero in [
            Bson::Int32(0),
            Bson::Int64(0),
            Bson::Double(0.0),
            Bson::Double(-0.0),
            Bson::Decimal128(dec128("0")),
            Bson::Decimal128(dec128("-0")),
            Bson::Decimal128(dec128("0.00")),
            Bson::Decimal128(dec128("-0E+20")),
            Bson::Decimal128(dec128("0E-6176")),
        ] {
            assert_eq!(classify(Some(&zero)), Earnings::None, "{zero:?}");
        }
    }

    #[test]
    fn negative_earnings_are_invalid() {
        for value in [
            Bson::Int32(-1),
            Bson::Int64(-1),
            Bson::Int64(i64::MIN),
            Bson::Double(-5.0),
            Bson::Double(-5e-324),
            Bson::Decimal128(dec128("-0.01")),
        ] {
            assert_eq!(invalid_reason(value), "negative");
        }
    }

    #[test]
    fn nan_and_infinite_doubles_are_invalid() {
        assert_eq!(invalid_reason(Bson::Double(f64::NAN)), "NaN");
        assert_eq!(invalid_reason(Bson::Double(-f64::NAN)), "NaN");
        assert_eq!(invalid_reason(Bson::Double(f64::INFINITY)), "infinite");
        assert_eq!(invalid_reason(Bson::Double(f64::NEG_INFINITY)), "infinite");
    }

    #[test]
    fn decimal128_nan_and_infinities_are_invalid() {
        assert_eq!(
            invalid_reason(Bson::Decimal128(dec128("NaN"))),
            "Decimal128 NaN"
        );
        assert_eq!(
            invalid_reason(Bson::Decimal128(dec128("sNaN"))),
            "Decimal128 NaN"
        );
        assert_eq!(
            invalid_reason(Bson::Decimal128(dec128("Infinity"))),
            "infinite"
        );
        assert_eq!(
            invalid_reason(Bson::Decimal128(dec128("-Infinity"))),
            "infinite"
        );
    }

    #[test]
    fn amounts_above_10_pow_15_are_out_of_range() {
        assert_eq!(
            invalid_reason(Bson::Double(1.000_000_000_000_1e15)),
            "out of range"
        );
        assert_eq!(invalid_reason(Bson::Double(f64::MAX)), "out of range");
        assert_eq!(
            invalid_reason(Bson::Decimal128(dec128("1000000000000000.01"))),
            "out of range"
        );
        assert_eq!(
            invalid_reason(Bson::Decimal128(dec128("1E+16"))),
            "out of range"
        );
        assert_eq!(
            invalid_reason(Bson::Decimal128(dec128("9E+6111"))),
            "out of range"
        );
        // Exactly 10^15, in any spelling, is still accepted.
        assert!(matches!(
            classify(Some(&Bson::Decimal128(dec128("1000000000000000.000")))),
            Earnings::Half(_)
        ));
        assert!(matches!(
            classify(Some(&Bson::Decimal128(dec128("0.1E+16")))),
            Earnings::Half(_)
        ));
    }

    #[test]
    fn non_numeric_types_are_invalid_with_type_name() {
        assert_eq!(invalid_reason(Bson::String("12.50".into())), "string");
        assert_eq!(invalid_reason(Bson::Boolean(true)), "boolean");
        assert_eq!(
            invalid_reason(Bson::Document(doc! { "amount": 10 })),
            "object"
        );
        assert_eq!(invalid_reason(Bson::Array(vec![Bson::Int32(10)])), "array");
        assert_eq!(
            invalid_reason(Bson::ObjectId(bson::oid::ObjectId::from_bytes([1; 12]))),
            "objectId"
        );
        assert_eq!(
            invalid_reason(Bson::DateTime(bson::DateTime::from_millis(0))),
            "date"
        );
        assert_eq!(invalid_reason(Bson::Undefined), "undefined");
        assert_eq!(invalid_reason(Bson::MinKey), "minKey");
    }

    #[test]
    fn encoder_matches_known_encodings() {
        let one = encode_decimal128(&dec(false, 1, 0)).unwrap();
        assert_eq!(high_low(one), (0x3040_0000_0000_0000, 1));
        assert_eq!(
            one.bytes(),
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x30]
        );

        let cents = encode_decimal128(&dec(false, 6172, -2)).unwrap();
        assert_eq!(high_low(cents), (0x303C_0000_0000_0000, 6172));
        assert_eq!(cents.to_string(), "61.72");

        let minus_one = encode_decimal128(&dec(true, 1, 0)).unwrap();
        assert_eq!(high_low(minus_one), (0xB040_0000_0000_0000, 1));

        let max = encode_decimal128(&dec(false, MAX_COEFFICIENT, MAX_EXPONENT)).unwrap();
        assert_eq!(
            high_low(max),
            (0x5FFF_ED09_BEAD_87C0, 0x378D_8E63_FFFF_FFFF)
        );
        let tiny = encode_decimal128(&dec(false, 1, MIN_EXPONENT)).unwrap();
        assert_eq!(high_low(tiny), (0, 1));
    }

    #[test]
    fn encoder_rejects_unrepresentable_values() {
        assert_eq!(encode_decimal128(&dec(false, MAX_COEFFICIENT + 1, 0)), None);
        assert_eq!(encode_decimal128(&dec(false, 1, MAX_EXPONENT + 1)), None);
        assert_eq!(encode_decimal128(&dec(false, 1, MIN_EXPONENT - 1)), None);
    }

    #[test]
    fn codec_round_trips() {
        let mut state = 7;
        let mut cases = vec![
            dec(false, 0, 0),
            dec(true, 0, 0),
            dec(false, 1, 0),
            dec(true, 6172, -2),
            dec(false, MAX_COEFFICIENT, MAX_EXPONENT),
            dec(true, MAX_COEFFICIENT, MIN_EXPONENT),
            dec(false, 0, MIN_EXPONENT),
            dec(false, 0, MAX_EXPONENT),
        ];
        for _ in 0..10_000 {
            let coefficient = (u128::from(next(&mut state)) << 64 | u128::from(next(&mut state)))
                % (MAX_COEFFICIENT + 1);
            let span = (MAX_EXPONENT - MIN_EXPONENT + 1) as u64;
            let exponent = MIN_EXPONENT + (next(&mut state) % span) as i32;
            cases.push(dec(next(&mut state) % 2 == 1, coefficient, exponent));
        }
        for d in cases {
            let encoded = encode_decimal128(&d).unwrap();
            assert_eq!(decode_decimal128(&encoded), DecodedDecimal::Finite(d));
        }
    }

    #[test]
    fn codec_agrees_with_bson_string_conversion() {
        let mut state = 42;
        for _ in 0..10_000 {
            // Mix short and full-width coefficients so both string paths are exercised.
            let digits = 1 + (next(&mut state) % 34) as u32;
            let coefficient = (u128::from(next(&mut state)) << 64 | u128::from(next(&mut state)))
                % 10u128.pow(digits);
            let exponent = MIN_EXPONENT + (next(&mut state) % 12_288) as i32;
            let negative = next(&mut state) % 2 == 1;
            let d = dec(negative, coefficient, exponent);
            let sign = if negative { "-" } else { "" };
            let parsed = dec128(&format!("{sign}{coefficient}E{exponent}"));
            let encoded = encode_decimal128(&d).unwrap();
            assert_eq!(encoded.bytes(), parsed.bytes(), "{d:?}");
            assert_eq!(encoded.to_string(), parsed.to_string());
            assert_eq!(decode_decimal128(&parsed), DecodedDecimal::Finite(d));
        }
        assert_eq!(decode_decimal128(&dec128("NaN")), DecodedDecimal::NaN);
        assert_eq!(decode_decimal128(&dec128("-sNaN")), DecodedDecimal::NaN);
        assert_eq!(
            decode_decimal128(&dec128("Infinity")),
            DecodedDecimal::Infinite { negative: false }
        );
        assert_eq!(
            decode_decimal128(&dec128("-Infinity")),
            DecodedDecimal::Infinite { negative: true }
        );
    }

    #[test]
    fn non_canonical_coefficients_decode_as_zero() {
        // Large-coefficient form (combination bits 11): exponent 0 sits in bits 124..111.
        let large = (0b011u128 << 125) | ((EXPONENT_BIAS as u128) << 111) | 12345;
        let large = Decimal128::from_bytes(large.to_le_bytes());
        assert_eq!(
            decode_decimal128(&large),
            DecodedDecimal::Finite(dec(false, 0, 0))
        );
        assert_eq!(large.to_string(), "0");
        assert_eq!(classify(Some(&Bson::Decimal128(large))), Earnings::None);

        // Normal form whose 113-bit coefficient exceeds 10^34 - 1.
        let over = (((EXPONENT_BIAS - 2) as u128) << 113) | ((1u128 << 113) - 1);
        let over = Decimal128::from_bytes(over.to_le_bytes());
        assert_eq!(
            decode_decimal128(&over),
            DecodedDecimal::Finite(dec(false, 0, -2))
        );
        assert_eq!(over.to_string(), "0.00");
    }
}
