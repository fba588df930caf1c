//! A stand-in artifact server (what `ARTIFACT_SERVER` points at): serves files from
//! memory over real HTTP on 127.0.0.1:0 and counts downloads per path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use sha2::{Digest, Sha256};

/// Stored bytes and download counts, by path.
#[derive(Default)]
struct Store {
    bytes: HashMap<String, Vec<u8>>,
    downloads: HashMap<String, usize>,
}

#[derive(Clone, Default)]
pub struct Files {
    inner: Arc<Mutex<Store>>,
}

impl Files {
    pub fn put(&self, path: &str, bytes: impl Into<Vec<u8>>) -> String {
        let bytes = bytes.into();
        let sha = sha256_hex(&bytes);
        self.inner
            .lock()
            .unwrap()
            .bytes
            .insert(path.to_string(), bytes);
        sha
    }
    pub fn downloads(&self, path: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .downloads
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn serve(State(files): State<Files>, Path(path): Path<String>) -> impl IntoResponse {
    let mut guard = files.inner.lock().unwrap();
    let found = guard.bytes.get(&path).cloned();
    match found {
        Some(bytes) => {
            *guard.downloads.entry(path).or_default() += 1;
            (StatusCode::OK, bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no artifact {path}")).into_response(),
    }
}

/// Starts the server on a runtime thread of its own; returns its base URL
/// (`http://127.0.0.1:PORT/artifacts`) and the file store.
pub fn start() -> (String, Files) {
    let files = Files::default();
    let app = Router::new()
        .route("/artifacts/{*path}", get(serve))
        .with_state(files.clone());
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/artifacts"), files)
}
