//! The halving rule's table and the Decimal128 codec against known encodings.

use super::*;
use bson::doc;
use std::str::FromStr;

/// Stored exponent = exponent + bias (to build non-canonical encodings by hand).
const EXPONENT_BIAS: i32 = 6176;

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
