//! Test data: a deterministic generator, loading documents, and byte-exact comparison.

use super::server::TestDb;
use mongodb::bson::Document;

/// The compiled-in migrations, by name.
pub const M001: &str = "001_add_withdrawal_fields_to_users";
pub const M002: &str = "002_create_withdrawal_indexes";
pub const M003: &str = "003_migrate_existing_user_balances";
/// The withdrawal fields every user ends with.
pub const FIELDS: [&str; 3] = [
    "withdrawableBalance",
    "totalWithdrawn",
    "pendingWithdrawals",
];

/// splitmix64: a tiny deterministic generator, so every run sees the same data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Inserts `docs` into `users`, in chunks the server accepts.
pub async fn load(t: &TestDb, docs: &[Document]) {
    let coll = t.db.collection::<Document>("users");
    for chunk in docs.chunks(10_000) {
        coll.insert_many(chunk.to_vec()).await.unwrap();
    }
}

/// A document's BSON bytes: equal only if byte-for-byte identical (field order, numeric types
/// and NaN payloads included), unlike `Document`'s `==`, which ignores field order.
pub fn bytes(d: &Document) -> Vec<u8> {
    mongodb::bson::to_vec(d).unwrap()
}

pub use mongo_migrate::testing::all_bytes;
