//! Deterministic, realistic LMS sample data for exercising the migrations.
//!
//! [`load`] fills `users` and `withdrawals` the way the LMS shapes them before
//! any migration ran: users carry `affiliateEarnings` in every numeric type the
//! production data has (plus missing, null, zero and, on request, invalid
//! values) and no `withdrawableBalance` / `totalWithdrawn` /
//! `pendingWithdrawals` fields. The same [`SampleSpec`] always produces the
//! same documents, so a failing run can be reproduced exactly.

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use futures::{stream, StreamExt, TryStreamExt};
use mongodb::{
    error::{ErrorKind, Result},
    Collection, Database,
};

use super::money::{self, Dec, Earnings};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SampleSpec {
    /// Users with realistic (valid, missing, null or zero) `affiliateEarnings`.
    pub users: u64,
    /// Withdrawal requests, each referencing a generated user.
    pub withdrawals: u64,
    /// PRNG seed; equal specs produce identical documents.
    pub seed: u64,
    /// Extra users whose `affiliateEarnings` is invalid (string, negative, NaN, ...).
    pub invalid_earnings: u64,
    /// Give about a third of users integer `_id`s and a third string `_id`s.
    pub mixed_ids: bool,
}

/// What was actually inserted. The `earnings_*` counters classify users the way
/// [`money::classify`] will during the backfill, so they add up to `users`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SampleReport {
    /// Users inserted, including the invalid-earnings ones.
    pub users: u64,
    /// Withdrawals inserted.
    pub withdrawals: u64,
    /// Users with a positive Double amount.
    pub earnings_double: u64,
    /// Users with a positive Int32 amount.
    pub earnings_int32: u64,
    /// Users with a positive Int64 amount.
    pub earnings_int64: u64,
    /// Users with a positive Decimal128 amount.
    pub earnings_decimal: u64,
    /// Users whose amount is missing, null or zero.
    pub earnings_none: u64,
    /// Users whose amount the backfill must refuse.
    pub earnings_invalid: u64,
}

/// Documents per `insert_many` call.
const CHUNK: u64 = 10_000;
/// `insert_many` calls kept in flight at once.
const IN_FLIGHT: usize = 2;
/// Mixed into the seed for the withdrawals' PRNG stream.
const WITHDRAWALS_STREAM: u64 = 0x5749_5448_4452_4157;
/// Fixed ObjectId timestamp (2023-09-12) so ids depend only on seed and position.
const OID_TIMESTAMP: u32 = 0x6500_0000;
const USERS_TAG: u8 = 0x75;
const WITHDRAWALS_TAG: u8 = 0x77;
/// Integer ids of the second kind start here so they never equal an Int32 id:
/// MongoDB compares numbers by value across types, so Int64(5) would clash with Int32(5).
const INT64_ID_OFFSET: i64 = 1 << 40;
/// 2021-01-01T00:00:00Z, the start of the generated activity window.
const EPOCH_MS: i64 = 1_609_459_200_000;
/// Three years of activity.
const WINDOW_MS: u64 = 3 * 365 * 24 * 3600 * 1000;
const DUPLICATE_KEY: i32 = 11000;

const FIRST_NAMES: &[&str] = &[
    "Aarav", "Amelia", "Carlos", "Chen", "Daniel", "Fatima", "Grace", "Hiro", "Isabella", "James",
    "Kwame", "Layla", "Lucas", "Maya", "Mohammed", "Nina", "Olivia", "Priya", "Sofia", "Yusuf",
];
const LAST_NAMES: &[&str] = &[
    "Adeyemi", "Brown", "Costa", "Dubois", "Garcia", "Hansen", "Ivanova", "Johnson", "Kim",
    "Kowalski", "Nguyen", "Okafor", "Patel", "Rossi", "Schmidt", "Silva", "Smith", "Tanaka",
    "Wang", "Williams",
];
const DOMAINS: &[&str] = &["example.com", "mail.example.org", "learners.example.net"];
const STATUSES: &[&str] = &[
    "pending",
    "approved",
    "processing",
    "completed",
    "rejected",
    "failed",
    "cancelled",
];
/// Statuses an admin or the payment provider has acted on.
const PROCESSED_STATUSES: &[&str] = &["approved", "processing", "completed", "rejected", "failed"];
const METHODS: &[&str] = &["bank_transfer", "paypal", "upi", "crypto", "check"];
const NOTES: &[&str] = &[
    "Requested via dashboard",
    "Priority payout",
    "Verified by finance team",
    "User asked to split payment",
    "Monthly affiliate payout",
];

/// Loads `spec` into `db`'s `users` and `withdrawals` collections.
///
/// Documents go in as unordered `insert_many` batches of 10,000. Duplicate-key
/// failures (e.g. loading the same seed twice) are skipped and left out of the
/// report; any other error is returned.
pub async fn load(db: &Database, spec: &SampleSpec) -> Result<SampleReport> {
    let mut report = SampleReport::default();
    let total_users = spec.users + spec.invalid_earnings;

    let mut rng = SplitMix64::new(spec.seed);
    insert_all(
        &db.collection("users"),
        total_users,
        |i| user_doc(i, spec, &mut rng),
        |user| report.count_user(user),
    )
    .await?;

    // Withdrawals need someone to belong to.
    if total_users > 0 {
        // A separate stream keeps withdrawals stable when only the user count changes.
        let mut rng = SplitMix64::new(spec.seed ^ WITHDRAWALS_STREAM);
        let mut inserted = 0;
        insert_all(
            &db.collection("withdrawals"),
            spec.withdrawals,
            |i| withdrawal_doc(i, spec, &mut rng),
            |_| inserted += 1,
        )
        .await?;
        report.withdrawals = inserted;
    }
    Ok(report)
}

/// Inserts documents `0..total` made by `make` in chunks, a few chunks in flight
/// so generation overlaps the server's work; `on_inserted` sees each document
/// that actually went in.
async fn insert_all(
    coll: &Collection<Document>,
    total: u64,
    mut make: impl FnMut(u64) -> Document,
    mut on_inserted: impl FnMut(&Document),
) -> Result<()> {
    let chunks = (0..total).step_by(CHUNK as usize).map(|start| {
        // Built here, in order, so the PRNG sequence does not depend on timing.
        let docs: Vec<Document> = (start..(start + CHUNK).min(total)).map(&mut make).collect();
        async move {
            let inserted = insert_chunk(coll, &docs).await?;
            Ok::<_, mongodb::error::Error>((docs, inserted))
        }
    });
    let mut results = stream::iter(chunks).buffered(IN_FLIGHT);
    while let Some((docs, inserted)) = results.try_next().await? {
        for (doc, ok) in docs.iter().zip(inserted) {
            if ok {
                on_inserted(doc);
            }
        }
    }
    Ok(())
}

impl SampleReport {
    fn count_user(&mut self, user: &Document) {
        self.users += 1;
        let value = user.get("affiliateEarnings");
        let counter = match (money::classify(value), value) {
            (Earnings::None, _) => &mut self.earnings_none,
            (Earnings::Invalid(_), _) => &mut self.earnings_invalid,
            (Earnings::Half(_), Some(Bson::Double(_))) => &mut self.earnings_double,
            (Earnings::Half(_), Some(Bson::Int32(_))) => &mut self.earnings_int32,
            (Earnings::Half(_), Some(Bson::Int64(_))) => &mut self.earnings_int64,
            (Earnings::Half(_), Some(Bson::Decimal128(_))) => &mut self.earnings_decimal,
            // classify only halves the four numeric types.
            (Earnings::Half(_), _) => &mut self.earnings_invalid,
        };
        *counter += 1;
    }
}

/// Inserts one batch; returns, per document, whether it was inserted.
async fn insert_chunk(coll: &Collection<Document>, docs: &[Document]) -> Result<Vec<bool>> {
    let mut inserted = vec![true; docs.len()];
    if docs.is_empty() {
        return Ok(inserted);
    }
    match coll.insert_many(docs).ordered(false).await {
        Ok(_) => Ok(inserted),
        Err(e) => {
            let ErrorKind::InsertMany(failure) = e.kind.as_ref() else {
                return Err(e);
            };
            let write_errors = failure.write_errors.as_deref().unwrap_or_default();
            let only_duplicates = failure.write_concern_error.is_none()
                && write_errors.iter().all(|w| w.code == DUPLICATE_KEY);
            if !only_duplicates {
                return Err(e);
            }
            for w in write_errors {
                if let Some(slot) = inserted.get_mut(w.index) {
                    *slot = false;
                }
            }
            Ok(inserted)
        }
    }
}

/// The `_id` of user `i`; a pure function so withdrawals can reference any user.
fn user_id(i: u64, spec: &SampleSpec) -> Bson {
    if !spec.mixed_ids {
        return Bson::ObjectId(object_id(USERS_TAG, spec.seed, i));
    }
    match i % 3 {
        0 => Bson::ObjectId(object_id(USERS_TAG, spec.seed, i)),
        1 if (i / 3) % 2 == 0 => match i32::try_from(i) {
            Ok(n) => Bson::Int32(n),
            Err(_) => Bson::Int64(i as i64),
        },
        1 => Bson::Int64(INT64_ID_OFFSET + i as i64),
        _ => Bson::String(format!("usr_{:04x}_{i:08}", spec.seed & 0xFFFF)),
    }
}

/// Timestamp, tag, two seed bytes, then a 40-bit big-endian counter, so ids
/// ascend in insertion order and differ between seeds.
fn object_id(tag: u8, seed: u64, counter: u64) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&OID_TIMESTAMP.to_be_bytes());
    bytes[4] = tag;
    bytes[5..7].copy_from_slice(&(SplitMix64::new(seed).next_u64() as u16).to_be_bytes());
    bytes[7..].copy_from_slice(&counter.to_be_bytes()[3..]);
    ObjectId::from_bytes(bytes)
}

/// User `i`; indices at or past `spec.users` are the invalid-earnings users.
fn user_doc(i: u64, spec: &SampleSpec, rng: &mut SplitMix64) -> Document {
    let first = rng.pick(FIRST_NAMES);
    let last = rng.pick(LAST_NAMES);
    let domain = rng.pick(DOMAINS);
    let role = match rng.below(100) {
        0..=84 => "student",
        85..=92 => "instructor",
        _ => "affiliate",
    };
    let created_at = random_date(rng);
    let mut user = doc! {
        "_id": user_id(i, spec),
        "name": format!("{first} {last}"),
        // The index makes every address unique.
        "email": format!("{}.{}{i}@{domain}", first.to_lowercase(), last.to_lowercase()),
        "role": role,
        "createdAt": created_at,
    };
    let earnings = if i < spec.users {
        valid_earnings(rng)
    } else {
        Some(invalid_earnings(i - spec.users))
    };
    if let Some(value) = earnings {
        user.insert("affiliateEarnings", value);
    }
    user
}

/// `None` means the field is left out. Shares: 65% Double, 10% Int32, 5% Int64,
/// 5% Decimal128, 10% missing, 3% null, 2% zero.
fn valid_earnings(rng: &mut SplitMix64) -> Option<Bson> {
    Some(match rng.below(100) {
        0..=64 => Bson::Double(cents_to_double(rng.range(1, 500_000))),
        65..=74 => Bson::Int32(rng.range(1, 5_000) as i32),
        75..=79 => Bson::Int64(rng.range(1, 50_000) as i64),
        80..=84 => {
            let cents = Dec {
                negative: false,
                coefficient: u128::from(rng.range(1, 500_000)),
                exponent: -2,
            };
            money::encode_decimal128(&cents)
                .map(Bson::Decimal128)
                .expect("six-digit coefficients always encode")
        }
        85..=94 => return None,
        95..=97 => Bson::Null,
        _ if rng.below(2) == 0 => Bson::Int32(0),
        _ => Bson::Double(0.0),
    })
}

/// The `k`-th invalid amount, cycling through every kind the backfill must refuse.
fn invalid_earnings(k: u64) -> Bson {
    match k % 6 {
        0 => Bson::String("12.50".to_owned()),
        1 => Bson::Double(-5.0),
        2 => Bson::Double(f64::NAN),
        3 => Bson::Double(f64::INFINITY),
        4 => Bson::Boolean(true),
        _ => Bson::Document(doc! { "amount": 10 }),
    }
}

/// Withdrawal `i`; statuses cycle so every one of them is present.
fn withdrawal_doc(i: u64, spec: &SampleSpec, rng: &mut SplitMix64) -> Document {
    let status = STATUSES[(i % STATUSES.len() as u64) as usize];
    let owner = rng.below(spec.users + spec.invalid_earnings);
    let created_at = random_date(rng);
    let mut withdrawal = doc! {
        "_id": object_id(WITHDRAWALS_TAG, spec.seed, i),
        "userId": user_id(owner, spec),
        "amount": cents_to_double(rng.range(1_000, 200_000)),
        "status": status,
        "method": rng.pick(METHODS),
        "createdAt": created_at,
    };
    if PROCESSED_STATUSES.contains(&status) {
        // Processed between an hour and a week after the request.
        let delay_ms = rng.range(3_600_000, 7 * 24 * 3_600_000) as i64;
        withdrawal.insert(
            "processedAt",
            DateTime::from_millis(created_at.timestamp_millis() + delay_ms),
        );
    }
    if status == "completed" {
        withdrawal.insert("transactionReference", transaction_reference(rng));
    }
    if rng.below(4) == 0 {
        withdrawal.insert("notes", rng.pick(NOTES));
    }
    withdrawal
}

fn transaction_reference(rng: &mut SplitMix64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let code: String = (0..12).map(|_| char::from(*rng.pick(ALPHABET))).collect();
    format!("TXN-{code}")
}

fn random_date(rng: &mut SplitMix64) -> DateTime {
    DateTime::from_millis(EPOCH_MS + rng.below(WINDOW_MS) as i64)
}

/// Whole cents as the double nearest to the decimal amount (exact division of
/// integers below 2^53 is correctly rounded, so 12345 becomes the same double as 123.45).
fn cents_to_double(cents: u64) -> f64 {
    cents as f64 / 100.0
}

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast and good enough for sample data.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is negligible for these ranges).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[cfg(test)]
#[path = "sample_tests.rs"]
mod tests;
