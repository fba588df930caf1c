//! `/static/…`: the UI's CSS and JS, embedded in the binary. URLs carry the content
//! hash (`?v=<sha256 prefix>`), so responses may be cached for a year; the ETag is the
//! full SHA-256.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "static/"]
struct Assets;

use crate::util::hex;

/// The URL of an embedded asset with its content version.
pub fn asset_url(name: &str) -> String {
    match Assets::get(name) {
        Some(f) => format!("/static/{name}?v={}", &hex(&f.metadata.sha256_hash())[..12]),
        None => format!("/static/{name}"),
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

pub async fn serve(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some(file) = Assets::get(&path) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()));
    let etag = HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static(""));
    let cache = HeaderValue::from_static("public, max-age=31536000, immutable");
    let validators = [(header::ETAG, etag.clone()), (header::CACHE_CONTROL, cache)];
    if crate::http::etag_matches(&headers, etag.to_str().unwrap_or_default()) {
        return (StatusCode::NOT_MODIFIED, validators).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(content_type(&path)),
        )],
        validators,
        file.data.into_owned(),
    )
        .into_response()
}

/// `/favicon.ico`, where browsers look without being told: the embedded icon. Its URL
/// has no version, so it is cached for a day rather than a year.
pub async fn favicon() -> Response {
    match Assets::get("favicon.ico") {
        Some(file) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("image/x-icon"),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=86400"),
                ),
            ],
            file.data.into_owned(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no icon\n").into_response(),
    }
}
