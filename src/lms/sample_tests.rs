//! Sample data: deterministic, realistic, and shaped as the migrations expect.

use super::*;
use std::collections::HashSet;

fn spec(users: u64, invalid_earnings: u64, mixed_ids: bool) -> SampleSpec {
    SampleSpec {
        users,
        withdrawals: 0,
        seed: 42,
        invalid_earnings,
        mixed_ids,
    }
}

fn users(spec: &SampleSpec) -> Vec<Document> {
    let mut rng = SplitMix64::new(spec.seed);
    (0..spec.users + spec.invalid_earnings)
        .map(|i| user_doc(i, spec, &mut rng))
        .collect()
}

fn withdrawals(spec: &SampleSpec) -> Vec<Document> {
    let mut rng = SplitMix64::new(spec.seed ^ WITHDRAWALS_STREAM);
    (0..spec.withdrawals)
        .map(|i| withdrawal_doc(i, spec, &mut rng))
        .collect()
}

fn report(docs: &[Document]) -> SampleReport {
    let mut report = SampleReport::default();
    for d in docs {
        report.count_user(d);
    }
    report
}

#[test]
fn prng_is_deterministic_per_seed() {
    // Reference output of splitmix64 seeded with 0; pins the sample data across releases.
    assert_eq!(SplitMix64::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    let a: Vec<u64> = {
        let mut r = SplitMix64::new(7);
        (0..100).map(|_| r.next_u64()).collect()
    };
    let b: Vec<u64> = {
        let mut r = SplitMix64::new(7);
        (0..100).map(|_| r.next_u64()).collect()
    };
    let c: Vec<u64> = {
        let mut r = SplitMix64::new(8);
        (0..100).map(|_| r.next_u64()).collect()
    };
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn prng_ranges_stay_in_bounds() {
    let mut rng = SplitMix64::new(1);
    for _ in 0..10_000 {
        assert!((5..=9).contains(&rng.range(5, 9)));
        assert!(rng.below(3) < 3);
    }
}

#[test]
fn same_seed_gives_identical_documents() {
    let s = SampleSpec {
        withdrawals: 500,
        ..spec(1_000, 12, true)
    };
    // Compared as text because the NaN earnings never equal themselves.
    let text = |docs: Vec<Document>| format!("{docs:?}");
    assert_eq!(text(users(&s)), text(users(&s)));
    assert_eq!(withdrawals(&s), withdrawals(&s));
    let other = SampleSpec {
        seed: 43,
        ..s.clone()
    };
    assert_ne!(text(users(&s)), text(users(&other)));
    assert_ne!(withdrawals(&s), withdrawals(&other));
}

#[test]
fn earnings_follow_the_target_distribution() {
    let docs = users(&spec(100_000, 0, false));
    let r = report(&docs);
    let share = |n: u64| n as f64 / 1_000.0; // percent of 100,000
    assert!((share(r.earnings_double) - 65.0).abs() < 1.0, "{r:?}");
    assert!((share(r.earnings_int32) - 10.0).abs() < 0.7, "{r:?}");
    assert!((share(r.earnings_int64) - 5.0).abs() < 0.5, "{r:?}");
    assert!((share(r.earnings_decimal) - 5.0).abs() < 0.5, "{r:?}");
    assert!((share(r.earnings_none) - 15.0).abs() < 0.8, "{r:?}");
    assert_eq!(r.earnings_invalid, 0);
    assert_eq!(r.users, 100_000);

    let field = |d: &Document| d.get("affiliateEarnings").cloned();
    let missing = docs.iter().filter(|d| field(d).is_none()).count() as u64;
    let null = docs.iter().filter(|d| field(d) == Some(Bson::Null)).count() as u64;
    let int_zero = docs
        .iter()
        .filter(|d| field(d) == Some(Bson::Int32(0)))
        .count() as u64;
    let double_zero = docs
        .iter()
        .filter(|d| field(d) == Some(Bson::Double(0.0)))
        .count() as u64;
    assert!((share(missing) - 10.0).abs() < 0.7);
    assert!((share(null) - 3.0).abs() < 0.4);
    assert!((share(int_zero + double_zero) - 2.0).abs() < 0.3);
    assert!(int_zero > 0 && double_zero > 0);
}

#[test]
fn valid_amounts_are_whole_cents() {
    for d in users(&spec(20_000, 0, false)) {
        match d.get("affiliateEarnings") {
            Some(Bson::Double(x)) => {
                let text = x.to_string();
                let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
                assert!(decimals <= 2 && *x <= 5_000.0, "{text}");
            }
            Some(Bson::Decimal128(v)) => {
                let money::DecodedDecimal::Finite(d) = money::decode_decimal128(v) else {
                    panic!("{v} should be finite");
                };
                assert_eq!(d.exponent, -2, "{v}");
            }
            _ => {}
        }
    }
}

#[test]
fn invalid_earnings_cycle_through_every_kind() {
    let s = spec(10, 12, false);
    let docs = users(&s);
    let reasons: Vec<&str> = docs[10..]
        .iter()
        .map(|d| match money::classify(d.get("affiliateEarnings")) {
            Earnings::Invalid(reason) => reason,
            other => panic!("expected invalid earnings, got {other:?}"),
        })
        .collect();
    let expected = ["string", "negative", "NaN", "infinite", "boolean", "object"];
    assert_eq!(reasons[..6], expected);
    assert_eq!(reasons[6..], expected);
    assert_eq!(report(&docs).earnings_invalid, 12);
    assert_eq!(report(&docs).users, 22);
}

#[test]
fn users_have_lms_fields_and_no_backfilled_ones() {
    let docs = users(&spec(2_000, 6, false));
    let emails: HashSet<&str> = docs.iter().map(|d| d.get_str("email").unwrap()).collect();
    assert_eq!(emails.len(), docs.len());
    let roles: HashSet<&str> = docs.iter().map(|d| d.get_str("role").unwrap()).collect();
    assert_eq!(roles, HashSet::from(["student", "instructor", "affiliate"]));
    let students = docs
        .iter()
        .filter(|d| d.get_str("role") == Ok("student"))
        .count();
    assert!(students > docs.len() / 2);
    for d in &docs {
        assert!(d.get_str("name").is_ok());
        assert!(d.get_datetime("createdAt").is_ok());
        for field in [
            "withdrawableBalance",
            "totalWithdrawn",
            "pendingWithdrawals",
        ] {
            assert!(!d.contains_key(field));
        }
    }
}

#[test]
fn object_ids_ascend_in_insertion_order() {
    let ids: Vec<ObjectId> = users(&spec(3_000, 0, false))
        .iter()
        .map(|d| d.get_object_id("_id").unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn mixed_ids_are_unique_and_split_in_thirds() {
    let docs = users(&spec(3_000, 0, true));
    let ids: Vec<Bson> = docs.iter().map(|d| d.get("_id").unwrap().clone()).collect();
    let unique: HashSet<String> = ids.iter().map(|id| format!("{id:?}")).collect();
    assert_eq!(unique.len(), ids.len());
    // Numeric ids compare by value across types in MongoDB, so check values too.
    let numbers: Vec<i64> = ids
        .iter()
        .filter_map(|id| match id {
            Bson::Int32(n) => Some(i64::from(*n)),
            Bson::Int64(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(numbers.iter().collect::<HashSet<_>>().len(), numbers.len());
    let count = |f: fn(&Bson) -> bool| ids.iter().filter(|id| f(id)).count();
    assert_eq!(count(|id| matches!(id, Bson::ObjectId(_))), 1_000);
    assert_eq!(count(|id| matches!(id, Bson::String(_))), 1_000);
    assert_eq!(count(|id| matches!(id, Bson::Int32(_))), 500);
    assert_eq!(count(|id| matches!(id, Bson::Int64(_))), 500);
}

#[test]
fn withdrawals_reference_users_and_fit_their_status() {
    let s = SampleSpec {
        withdrawals: 7_000,
        ..spec(300, 6, true)
    };
    let user_ids: HashSet<String> = users(&s)
        .iter()
        .map(|d| format!("{:?}", d.get("_id").unwrap()))
        .collect();
    let docs = withdrawals(&s);
    let statuses: HashSet<&str> = docs.iter().map(|d| d.get_str("status").unwrap()).collect();
    assert_eq!(statuses, STATUSES.iter().copied().collect());
    let methods: HashSet<&str> = docs.iter().map(|d| d.get_str("method").unwrap()).collect();
    assert_eq!(methods, METHODS.iter().copied().collect());
    assert!(docs.iter().any(|d| d.contains_key("notes")));
    assert!(docs.iter().any(|d| !d.contains_key("notes")));
    for d in &docs {
        let status = d.get_str("status").unwrap();
        assert!(user_ids.contains(&format!("{:?}", d.get("userId").unwrap())));
        let amount = d.get_f64("amount").unwrap();
        assert_eq!(cents_to_double((amount * 100.0).round() as u64), amount);
        assert!((10.0..=2_000.0).contains(&amount));
        assert_eq!(
            d.contains_key("processedAt"),
            PROCESSED_STATUSES.contains(&status)
        );
        if let Ok(processed) = d.get_datetime("processedAt") {
            assert!(*processed > *d.get_datetime("createdAt").unwrap());
        }
        assert_eq!(
            d.contains_key("transactionReference"),
            status == "completed"
        );
    }
}
