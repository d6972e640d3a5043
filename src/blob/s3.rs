//! S3 and S3-compatible servers (MinIO, s3s-fs) through `aws-sdk-s3`, with
//! path-style addressing where the server needs it.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{BlobError, BlobMeta, BlobStore, check_key};
use crate::config::BlobConfig;

/// A bucket.
#[derive(Debug)]
pub struct S3Blobs {
    client: Client,
    bucket: String,
}

fn sdk<E: std::fmt::Debug>(key: &str, e: SdkError<E, HttpResponse>) -> BlobError {
    let not_found = e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
    if not_found {
        BlobError::NotFound(key.to_owned())
    } else {
        BlobError::Unavailable(format!("{key}: {e:?}"))
    }
}

impl S3Blobs {
    /// A client for the configured endpoint and bucket.
    pub async fn connect(cfg: &BlobConfig) -> Result<Self, BlobError> {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if !cfg.access_key.is_empty() {
            loader = loader.credentials_provider(Credentials::new(
                cfg.access_key.clone(),
                cfg.secret_key.expose().to_owned(),
                None,
                None,
                "atelier-config",
            ));
        }
        if !cfg.endpoint.is_empty() {
            loader = loader.endpoint_url(&cfg.endpoint);
        }
        let shared = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            .build();
        Ok(Self {
            client: Client::from_conf(conf),
            bucket: cfg.bucket.clone(),
        })
    }

    /// Creates the bucket when missing (setup and tests).
    pub async fn ensure_bucket(&self) -> Result<(), BlobError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| sdk(&self.bucket, e))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    fn backend(&self) -> &'static str {
        "s3"
    }

    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), BlobError> {
        check_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk(key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        check_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk(key, e))?;
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| BlobError::Unavailable(format!("{key}: {e}")))?;
        Ok(data.into_bytes())
    }

    async fn head(&self, key: &str) -> Result<BlobMeta, BlobError> {
        check_key(key)?;
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk(key, e))?;
        Ok(BlobMeta {
            size: out.content_length().unwrap_or_default().max(0) as u64,
            content_type: out.content_type().map(str::to_owned),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        check_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk(key, e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| sdk(prefix, e))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        out.sort();
        Ok(out)
    }
}
