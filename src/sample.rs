//! placeholder
#[derive(Debug, Clone)]
pub struct SampleSpec {
    pub users: u64,
    pub withdrawals: u64,
    pub seed: u64,
    pub invalid_earnings: u64,
    pub mixed_ids: bool,
}
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SampleReport {
    pub users: u64,
    pub withdrawals: u64,
}
pub async fn load(
    _db: &mongodb::Database,
    _s: &SampleSpec,
) -> mongodb::error::Result<SampleReport> {
    Ok(SampleReport::default())
}
