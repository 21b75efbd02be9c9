//! Request bodies: read with a size cap, then decompressed (gzip, zstd, deflate) with the same cap
//! applied to the output, so neither a large upload nor a zip bomb is ever held in memory whole.

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;

use crate::error::ApiError;

/// Default for how long a client may take to send its body; a stalled upload is answered 408
/// and its connection freed.
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Read the raw body, refusing more than `limit` bytes (413) or a body that takes longer than
/// `timeout` to arrive (408).
pub async fn read_capped(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::RequestTimeout(format!(
                "request body not received within {} ms",
                timeout.as_millis()
            ))
        })?;
    read.map_err(|e| {
        // `to_bytes` reports both a too-long body and a broken upload; tell them apart.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::PayloadTooLarge(format!("request body over {limit} bytes"));
            }
            source = err.source();
        }
        ApiError::invalid("", format!("could not read the request body: {e}"))
    })
}

/// Decode the body by `Content-Encoding`, producing at most `limit` bytes (413 beyond).
pub fn decode(headers: &HeaderMap, raw: Bytes, limit: usize) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => inflate(flate2::read::MultiGzDecoder::new(&raw[..]), limit, "gzip"),
        "deflate" => inflate(flate2::read::ZlibDecoder::new(&raw[..]), limit, "deflate"),
        "zstd" => {
            let decoder = zstd::stream::read::Decoder::new(&raw[..])
                .map_err(|e| ApiError::invalid("", format!("invalid zstd body: {e}")))?;
            inflate(decoder, limit, "zstd")
        }
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {other:?} is not supported; use gzip, zstd, deflate or none"
        ))),
    }
}

fn inflate(reader: impl Read, limit: usize, name: &str) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity(limit.min(64 * 1024));
    let read = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::invalid("", format!("invalid {name} body: {e}")))?;
    if read > limit {
        return Err(ApiError::PayloadTooLarge(format!(
            "request body over {limit} bytes after decompression"
        )));
    }
    Ok(Bytes::from(out))
}

/// The media type of the body, checked against what the route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    Json,
    Ndjson,
}

/// JSON is accepted as `application/json`, `text/plain` (what `navigator.sendBeacon` sends) or
/// with no Content-Type; NDJSON as `application/x-ndjson` (or `application/jsonl`).
pub fn media_type(headers: &HeaderMap) -> Result<MediaType, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(MediaType::Json);
    };
    let value = value.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = value.split(';').next().unwrap_or("").trim();
    match essence {
        "application/json" | "text/plain" | "" => Ok(MediaType::Json),
        "application/x-ndjson" | "application/jsonl" | "application/json-seq" => Ok(MediaType::Ndjson),
        other if other.ends_with("+json") => Ok(MediaType::Json),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other:?} is not accepted; send application/json (or application/x-ndjson to /v1/events)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use std::io::Write;

    fn gz(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("write");
        Bytes::from(e.finish().expect("finish"))
    }

    #[test]
    fn gzip_bomb_is_refused() {
        let bomb = gz(&vec![b' '; 10 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024);
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let err = decode(&h, bomb, 500 * 1024).expect_err("must refuse");
        assert_eq!(err.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn gzip_and_zstd_roundtrip() {
        let data = br#"{"a":1}"#;
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(&decode(&h, gz(data), 100).expect("gzip")[..], data);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        let z = zstd::encode_all(&data[..], 3).expect("zstd");
        assert_eq!(&decode(&h, Bytes::from(z), 100).expect("zstd")[..], data);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert!(decode(&h, Bytes::from_static(b"x"), 100).is_err());
    }

    #[test]
    fn garbage_gzip_is_400() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let err = decode(&h, Bytes::from_static(b"not gzip"), 100).expect_err("bad");
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
    }
}
