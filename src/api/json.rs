//! Extractors whose every rejection is an [`ApiError`] with a JSON body.
//! Bodies: malformed JSON 400, wrong shape or unknown field 422, wrong
//! content type 415, oversized body 413. Query strings: 400.

use aide::generate::GenContext;
use aide::openapi::{MediaType, Operation, RequestBody, SchemaObject};
use aide::operation::{ParamLocation, add_parameters, parameters_from_schema, set_body};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use super::ApiError;
use super::contract::add_errors;

/// A request body of `media` with `T`'s schema, and the statuses a body
/// that does not fit is answered with.
fn body<T: JsonSchema>(ctx: &mut GenContext, op: &mut Operation, media: &str) {
    let schema = ctx.schema.subschema_for::<T>();
    let description = ctx
        .resolve_schema(&schema)
        .get("description")
        .and_then(|d| d.as_str())
        .map(String::from);
    set_body(
        ctx,
        op,
        RequestBody {
            description,
            content: IndexMap::from_iter([(
                media.to_owned(),
                MediaType {
                    schema: Some(SchemaObject {
                        json_schema: schema,
                        example: None,
                        external_docs: None,
                    }),
                    ..Default::default()
                },
            )]),
            required: true,
            extensions: IndexMap::default(),
        },
    );
    add_errors(op, &[400, 413, 415, 422]);
}

/// `Json<T>` with API errors.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(r) => Err(rejection(r)),
        }
    }
}

impl<T: JsonSchema> aide::OperationInput for JsonBody<T> {
    fn operation_input(ctx: &mut GenContext, op: &mut Operation) {
        body::<T>(ctx, op, "application/json");
    }
}

fn rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        _ => "malformed_json",
    };
    ApiError::new(status, code, r.body_text())
}

/// `Query<T>` with API errors.
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::bad_request("invalid_query", r.body_text())),
        }
    }
}

impl<T: JsonSchema> aide::OperationInput for QueryParams<T> {
    fn operation_input(ctx: &mut GenContext, op: &mut Operation) {
        let schema = ctx.schema.subschema_for::<T>();
        let params = parameters_from_schema(ctx, schema, ParamLocation::Query);
        add_parameters(ctx, op, params);
        add_errors(op, &[400]);
    }
}

/// `Multipart` with API errors: a body that is not a multipart form is a
/// 415 with a JSON reason. `F` describes the form's fields for the
/// document (the handler reads them from the stream, in any order).
#[derive(Debug)]
pub struct MultipartForm<F>(
    pub axum::extract::Multipart,
    pub std::marker::PhantomData<F>,
);

impl<F: JsonSchema> aide::OperationInput for MultipartForm<F> {
    fn operation_input(ctx: &mut GenContext, op: &mut Operation) {
        body::<F>(ctx, op, "multipart/form-data");
    }
}

impl<S, F> FromRequest<S> for MultipartForm<F>
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::extract::Multipart::from_request(req, state)
            .await
            .map(|m| Self(m, std::marker::PhantomData))
            .map_err(|r| {
                ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("send a multipart/form-data body ({})", r.body_text()),
                )
            })
    }
}

/// An integer as JSON Schema counts them: any number without a fractional
/// part (`3` and `3.0`), in `T`'s range; in a query string, its text. The
/// document gives `T`'s schema, so what it calls an integer is accepted as
/// one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Int<T>(pub T);

impl<'de, T: TryFrom<i64>> serde::Deserialize<'de> for Int<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: TryFrom<i64>> serde::de::Visitor<'_> for V<T> {
            type Value = Int<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int<T>, E> {
                T::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int<T>, E> {
                let v = i64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))?;
                self.visit_i64(v)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Int<T>, E> {
                // Exact below 2^53; past it a float is no exact integer.
                if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
                    self.visit_i64(v as i64)
                } else {
                    Err(E::custom(format!("{v} is not an integer")))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Int<T>, E> {
                match v.parse::<i64>() {
                    Ok(n) => self.visit_i64(n),
                    Err(_) => match v.parse::<f64>() {
                        Ok(f) if f.is_finite() => self.visit_f64(f),
                        _ => Err(E::custom(format!("{v:?} is not an integer"))),
                    },
                }
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Int<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

#[cfg(test)]
mod tests {
    use super::Int;

    #[test]
    fn integers_as_json_schema_counts_them() {
        let parse = |s: &str| serde_json::from_str::<Int<u16>>(s).map(|i| i.0);
        assert_eq!(parse("3").unwrap(), 3);
        assert_eq!(parse("3.0").unwrap(), 3);
        assert_eq!(parse("\"7\"").unwrap(), 7);
        assert!(parse("3.5").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("70000").is_err());
        assert!(parse("\"x\"").is_err());
        assert!(parse("null").is_err());
    }
}
