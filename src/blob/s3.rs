//! S3 and S3-compatible servers (MinIO, s3s-fs) through `aws-sdk-s3`, with
//! path-style addressing where the server needs it.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};

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
        match self
            .client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // Another process created it between the two calls (every
            // member of a cluster starting at once).
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_bucket_already_exists() || s.is_bucket_already_owned_by_you()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk(&self.bucket, e)),
        }
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

/// The smallest part S3 accepts in a multipart upload (the last excepted).
pub const MIN_PART: usize = 5 * 1024 * 1024;
/// The most parts one multipart upload may have.
const MAX_PARTS: usize = 10_000;

impl S3Blobs {
    /// Starts streaming an object of unknown size into `key`, in parts of
    /// `part_size` bytes (at least [`MIN_PART`]). Nothing is sent yet.
    pub fn upload(
        &self,
        key: &str,
        content_type: &str,
        part_size: usize,
    ) -> Result<S3Upload, BlobError> {
        check_key(key)?;
        Ok(S3Upload {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            content_type: content_type.to_owned(),
            part_size: part_size.max(MIN_PART),
            buf: BytesMut::new(),
            upload_id: None,
            parts: Vec::new(),
            bytes: 0,
        })
    }
}

/// An object written as a stream: bytes are buffered up to a part and each
/// full part goes up as a part of a multipart upload, so memory holds about
/// one part whatever the object's size. The multipart upload starts with
/// the first full part: a small object is one plain PUT at `finish`. After
/// any error, `abort` leaves neither an object nor stored parts behind.
#[derive(Debug)]
pub struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    content_type: String,
    part_size: usize,
    buf: BytesMut,
    upload_id: Option<String>,
    parts: Vec<CompletedPart>,
    bytes: u64,
}

impl S3Upload {
    /// The multipart upload under way, once the first part went up (what
    /// an operator needs to clean up by hand if `abort` failed).
    pub fn upload_id(&self) -> Option<&str> {
        self.upload_id.as_deref()
    }

    /// Appends bytes; sends every part that is full.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        self.buf.extend_from_slice(data);
        loop {
            // Parts grow by a step every thousand, so the 10,000-part limit
            // is 55 thousand base parts away (440 GiB at 8 MiB), not 10.
            let size = self.part_size * (1 + self.parts.len() / 1000);
            if self.buf.len() < size {
                return Ok(());
            }
            let part = self.buf.split_to(size).freeze();
            self.send_part(part).await?;
        }
    }

    async fn send_part(&mut self, body: Bytes) -> Result<(), BlobError> {
        if self.parts.len() == MAX_PARTS {
            return Err(BlobError::Unavailable(format!(
                "{}: over {MAX_PARTS} parts; use larger parts",
                self.key
            )));
        }
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let out = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .content_type(&self.content_type)
                    .send()
                    .await
                    .map_err(|e| sdk(&self.key, e))?;
                let id = out
                    .upload_id()
                    .map(str::to_owned)
                    .ok_or_else(|| BlobError::Unavailable(format!("{}: no upload id", self.key)))?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        let number = self.parts.len() as i32 + 1;
        let len = body.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| sdk(&self.key, e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
        self.bytes += len;
        Ok(())
    }

    /// Sends what is buffered and makes the object visible; the size.
    pub async fn finish(&mut self) -> Result<u64, BlobError> {
        let rest = self.buf.split().freeze();
        let Some(upload_id) = self.upload_id.clone() else {
            let len = rest.len() as u64;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type(&self.content_type)
                .body(ByteStream::from(rest))
                .send()
                .await
                .map_err(|e| sdk(&self.key, e))?;
            return Ok(len);
        };
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk(&self.key, e))?;
        // Completed: nothing is left to abort.
        self.upload_id = None;
        Ok(self.bytes)
    }

    /// Drops the parts sent so far (S3 keeps, and bills, the parts of an
    /// upload that is neither completed nor aborted).
    pub async fn abort(&mut self) -> Result<(), BlobError> {
        self.buf.clear();
        let Some(upload_id) = self.upload_id.take() else {
            return Ok(());
        };
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| sdk(&self.key, e))?;
        Ok(())
    }
}
