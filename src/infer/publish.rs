//! Publishing a model: check the contract by loading and running it, store
//! it at `models/{style}/{version}/model.pt`, announce it on the models
//! topic. Workers swap it in; the upload edge starts accepting the style.

use std::sync::Arc;

use bytes::Bytes;

use super::model::{Engine, ModelError};
use super::registry::sha256_hex;
use crate::blob::{BlobError, BlobStore};
use crate::bus::{Appended, BusError, Producer};
use crate::event::{
    Event, EventData, EventId, ModelPublished, ModelVersion, Principal, Style, UserId,
};

/// Why a model was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// It breaks the model contract (or is not TorchScript).
    #[error("model refused: {0}")]
    Contract(#[from] ModelError),
    /// The blob store failed.
    #[error("storing the model: {0}")]
    Blob(#[from] BlobError),
    /// The log failed.
    #[error("announcing the model: {0}")]
    Bus(#[from] BusError),
}

/// The principal of events the system itself emits.
pub fn system_principal(role: &str) -> Principal {
    Principal {
        id: UserId::parse(&format!("system:{role}")).expect("a valid system id"),
        name: format!("atelier {role}"),
        avatar_url: None,
    }
}

/// The default version of a model file: the first 12 hex digits of its
/// SHA-256, so that publishing the same file twice is one version.
pub fn content_version(bytes: &[u8]) -> ModelVersion {
    ModelVersion::parse(&sha256_hex(bytes)[..12]).expect("hex is a valid version")
}

/// Checks, stores and announces a model. `engine` checks the contract; a
/// process without one (a build without libtorch) cannot publish.
pub async fn publish(
    engine: &Arc<dyn Engine>,
    blobs: &dyn BlobStore,
    producer: &Producer,
    style: Style,
    version: Option<ModelVersion>,
    bytes: Bytes,
) -> Result<(ModelPublished, Appended), PublishError> {
    let checked = {
        let (engine, bytes) = (engine.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || engine.load(&bytes).map(drop))
            .await
            .map_err(|e| ModelError::permanent(format!("contract check panicked: {e}")))?
    };
    checked?;
    let version = version.unwrap_or_else(|| content_version(&bytes));
    let object_key = format!("models/{style}/{version}/model.pt");
    let sha256 = sha256_hex(&bytes);
    blobs
        .put(&object_key, bytes, "application/octet-stream")
        .await?;
    let published = ModelPublished {
        style,
        version,
        object_key,
        sha256,
    };
    let event = Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: crate::edge::now(),
        principal: system_principal("models"),
        data: EventData::ModelPublished(published.clone()),
    };
    let at = producer.send(&event).await?;
    tracing::info!(style = %published.style, version = %published.version, "model published");
    Ok((published, at))
}
