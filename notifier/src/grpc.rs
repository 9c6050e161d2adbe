//! The `NotifierService` gRPC surface (proto/messenger/notifier/v1). The
//! caller is the `x-user-id` metadata (trusted: mutual TLS); every failure
//! carries a stable `x-error-code` (and `x-error-field`), the same keys as
//! command-service and query-service.

use chrono::{DateTime, SecondsFormat, Utc};
use proto::meta::{caller, invalid, status};
use proto::notifier::v1 as pb;
use proto::notifier::v1::notifier_service_server::NotifierService;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use crate::prefs::{Prefs, PrefsError, Settings};
use crate::webpush::VapidKey;

impl From<PrefsError> for Status {
    fn from(e: PrefsError) -> Self {
        let msg = e.to_string();
        match e {
            PrefsError::Invalid { field, .. } => {
                status(Code::InvalidArgument, "validation_failed", msg, Some(field))
            }
            PrefsError::SubscriptionNotFound => {
                status(Code::NotFound, "subscription_not_found", msg, None)
            }
            PrefsError::ConversationNotFound => {
                status(Code::NotFound, "conversation_not_found", msg, None)
            }
            PrefsError::Database(err) => {
                tracing::error!(error = ?err, "notifier preferences call failed");
                status(Code::Internal, "internal", "internal error", None)
            }
        }
    }
}

fn parse_id(field: &'static str, s: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s).map_err(|_| invalid(field, "not a UUID"))
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The service implementation.
#[derive(Debug, Clone)]
pub struct NotifierGrpc {
    prefs: Prefs,
    vapid: VapidKey,
}

impl NotifierGrpc {
    pub fn new(prefs: Prefs, vapid: VapidKey) -> Self {
        Self { prefs, vapid }
    }
}

#[tonic::async_trait]
impl NotifierService for NotifierGrpc {
    async fn get_vapid_public_key(
        &self,
        req: Request<pb::GetVapidPublicKeyRequest>,
    ) -> Result<Response<pb::VapidPublicKey>, Status> {
        caller(&req)?;
        Ok(Response::new(pb::VapidPublicKey {
            public_key: self.vapid.public_key().to_owned(),
        }))
    }

    async fn create_subscription(
        &self,
        req: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let user = caller(&req)?;
        let r = req.into_inner();
        let (id, created) = self
            .prefs
            .create_subscription(user, &r.endpoint, &r.p256dh, &r.auth)
            .await?;
        Ok(Response::new(pb::CreateSubscriptionResponse {
            subscription_id: id.to_string(),
            created,
        }))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let user = caller(&req)?;
        let subs = self.prefs.list_subscriptions(user).await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subs
                .into_iter()
                .map(|s| pb::Subscription {
                    subscription_id: s.subscription_id.to_string(),
                    endpoint: s.endpoint,
                    created_at: time(s.created_at),
                })
                .collect(),
        }))
    }

    async fn delete_subscription(
        &self,
        req: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let user = caller(&req)?;
        let id = parse_id("subscription_id", &req.get_ref().subscription_id)?;
        self.prefs.delete_subscription(user, id).await?;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn get_settings(
        &self,
        req: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::NotificationSettings>, Status> {
        let user = caller(&req)?;
        let s = self.prefs.settings(user).await?;
        Ok(Response::new(pb::NotificationSettings {
            push: s.push,
            email: s.email,
            email_delay_seconds: s.email_delay_seconds,
        }))
    }

    async fn put_settings(
        &self,
        req: Request<pb::NotificationSettings>,
    ) -> Result<Response<pb::PutSettingsResponse>, Status> {
        let user = caller(&req)?;
        let r = req.into_inner();
        self.prefs
            .put_settings(
                user,
                Settings {
                    push: r.push,
                    email: r.email,
                    email_delay_seconds: r.email_delay_seconds,
                },
            )
            .await?;
        Ok(Response::new(pb::PutSettingsResponse {}))
    }

    async fn set_conversation_mute(
        &self,
        req: Request<pb::SetConversationMuteRequest>,
    ) -> Result<Response<pb::SetConversationMuteResponse>, Status> {
        let user = caller(&req)?;
        let r = req.into_inner();
        let conversation = parse_id("conversation_id", &r.conversation_id)?;
        let until = if r.muted && !r.muted_until.is_empty() {
            Some(
                DateTime::parse_from_rfc3339(&r.muted_until)
                    .map_err(|_| invalid("muted_until", "not an RFC 3339 time"))?
                    .with_timezone(&Utc),
            )
        } else {
            None
        };
        self.prefs
            .set_mute(user, conversation, r.muted, until)
            .await?;
        Ok(Response::new(pb::SetConversationMuteResponse {}))
    }
}
