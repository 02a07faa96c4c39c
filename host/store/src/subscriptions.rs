//! Who each Subscription acts for (see migration 10): recorded when it is written through the
//! API, read when its criteria are matched and its notifications delivered.

use sqlx::Row;

use super::{Store, StoreError};
use hearth_fhir::instant::now_us;

/// The principal a Subscription acts for, as it was when it last wrote the Subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionOwner {
    pub issuer: String,
    pub subject: String,
    pub client_id: Option<String>,
    pub patient: Option<String>,
    /// The scopes as granted, space-separated.
    pub scopes: String,
}

impl Store {
    /// Records (or replaces) the owner of Subscription `id`.
    pub async fn set_subscription_owner(&self, id: &str, owner: &SubscriptionOwner) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO subscription_owner (id, issuer, subject, client_id, patient, scopes, recorded_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO UPDATE SET issuer = excluded.issuer, \
             subject = excluded.subject, client_id = excluded.client_id, patient = excluded.patient, \
             scopes = excluded.scopes, recorded_us = excluded.recorded_us",
        )
        .bind(id)
        .bind(&owner.issuer)
        .bind(&owner.subject)
        .bind(owner.client_id.as_deref())
        .bind(owner.patient.as_deref())
        .bind(&owner.scopes)
        .bind(now_us())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The owner of Subscription `id`, if one was recorded.
    pub async fn subscription_owner(&self, id: &str) -> Result<Option<SubscriptionOwner>, StoreError> {
        let row =
            sqlx::query("SELECT issuer, subject, client_id, patient, scopes FROM subscription_owner WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        row.map(|r| {
            Ok(SubscriptionOwner {
                issuer: r.try_get(0)?,
                subject: r.try_get(1)?,
                client_id: r.try_get(2)?,
                patient: r.try_get(3)?,
                scopes: r.try_get(4)?,
            })
        })
        .transpose()
    }
}
