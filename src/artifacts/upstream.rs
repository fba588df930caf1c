//! Where missing artifacts come from: the public upstreams of the well-known mirror
//! paths (reference/protocols.md §7), how each publishes the hash to check, and the
//! streaming download that hashes while it writes.
//!
//! | mirror path | upstream | checked against |
//! |---|---|---|
//! | `minecraft/vanilla/<ver>/server.jar` | Mojang version manifest → per-version JSON | sha1 + size |
//! | `minecraft/paper/<ver>/server.jar` | PaperMC Fill v3 builds (newest STABLE) | sha256 + size |
//! | `minecraft/fabric/<ver>/fabric-server.jar` | Fabric meta server launcher | nothing published: trust on first use |
//! | `java/<major>/OpenJDK<major>.tar.gz` | Adoptium latest Temurin JRE, linux x64 | sha256 + size |

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{ArtifactError, ArtifactSource, hex};
use crate::config::ArtifactsConfig;

/// Sent on every upstream request: PaperMC rejects generic agents and asks for a
/// contact URL, and the others deserve to know who is calling.
pub const USER_AGENT: &str = concat!(
    "zlh/",
    env!("CARGO_PKG_VERSION"),
    " (+https://github.com/zlh)"
);

/// Metadata documents are small; a bigger one is not what we asked for.
const MAX_METADATA_BYTES: usize = 32 << 20;
/// Cap for downloads whose size upstream does not publish (the Fabric launcher is
/// a few hundred KiB): a misbehaving upstream must not fill the disk.
const MAX_UNSIZED_DOWNLOAD: u64 = 1 << 30;
/// One metadata request, start to end.
const METADATA_TIMEOUT: Duration = Duration::from_secs(60);

/// An upstream failure: what was fetched for which artifact, from where, and why
/// it did not work.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("fetching {what} for {path} from {url}: {message}")]
    Request {
        path: String,
        what: &'static str,
        url: String,
        message: String,
    },
    #[error("fetching {what} for {path} from {url}: HTTP {status}")]
    Status {
        path: String,
        what: &'static str,
        url: String,
        status: u16,
    },
    #[error("reading {what} for {path} from {url}: {message}")]
    Format {
        path: String,
        what: &'static str,
        url: String,
        message: String,
    },
    /// Upstream answered, and does not have it (unknown version, no build).
    #[error(
        "{path} cannot be filled from upstream: {message} (asked {url}); import it with `zlh artifacts add {path} <file>`"
    )]
    Unknown {
        path: String,
        url: String,
        message: String,
    },
    #[error("{algo} mismatch for {path} from {url}: expected {expected}, got {actual}")]
    Mismatch {
        algo: &'static str,
        path: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("size mismatch for {path} from {url}: expected {expected} bytes, got {actual}")]
    Size {
        path: String,
        url: String,
        expected: u64,
        actual: u64,
    },
}

/// A mirror path that upstream fill knows how to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    Vanilla { version: String },
    Paper { version: String },
    Fabric { version: String },
    Java { major: String },
}

impl Known {
    /// Recognises the mirror path conventions of the original system. `path` has
    /// already passed [`super::validate_path`], so its segments are URL-safe.
    pub fn parse(path: &str) -> Option<Known> {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["minecraft", "vanilla", v, "server.jar"] => Some(Known::Vanilla {
                version: v.to_string(),
            }),
            ["minecraft", "paper", v, "server.jar"] => Some(Known::Paper {
                version: v.to_string(),
            }),
            ["minecraft", "fabric", v, "fabric-server.jar"] => Some(Known::Fabric {
                version: v.to_string(),
            }),
            ["java", major, file]
                if !major.is_empty()
                    && major.len() <= 3
                    && major.bytes().all(|b| b.is_ascii_digit())
                    && *file == format!("OpenJDK{major}.tar.gz") =>
            {
                Some(Known::Java {
                    major: major.to_string(),
                })
            }
            _ => None,
        }
    }

    pub fn source(&self) -> ArtifactSource {
        match self {
            Known::Vanilla { .. } => ArtifactSource::Mojang,
            Known::Paper { .. } => ArtifactSource::Paper,
            Known::Fabric { .. } => ArtifactSource::Fabric,
            Known::Java { .. } => ArtifactSource::Adoptium,
        }
    }
}

/// What upstream says the bytes must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Sha1(String),
    Sha256(String),
    /// Upstream publishes no hash (Fabric's generated launcher jar): whatever the
    /// first fetch returns is recorded and trusted from then on. `Some` = the sha256
    /// recorded by an earlier fetch of the same path, which a refetch must match.
    TrustOnFirstUse(Option<String>),
}

/// The file to download for one artifact.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub url: String,
    pub expect: Expect,
    pub size: Option<u64>,
    pub source: ArtifactSource,
}

/// What a download wrote, with both digests computed on the way.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub size: u64,
    pub sha256: String,
    pub sha1: String,
}

/// The upstream client: base URLs from `[artifacts]` and one HTTP client.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    config: ArtifactsConfig,
}

#[derive(Deserialize)]
struct MojangManifest {
    versions: Vec<MojangManifestEntry>,
}

#[derive(Deserialize)]
struct MojangManifestEntry {
    id: String,
    url: String,
}

#[derive(Deserialize)]
struct MojangVersion {
    #[serde(default)]
    downloads: HashMap<String, MojangDownload>,
}

#[derive(Deserialize)]
struct MojangDownload {
    sha1: String,
    size: u64,
    url: String,
}

#[derive(Deserialize)]
struct PaperBuild {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    downloads: HashMap<String, PaperDownload>,
}

#[derive(Deserialize)]
struct PaperDownload {
    url: String,
    size: u64,
    checksums: PaperChecksums,
}

#[derive(Deserialize)]
struct PaperChecksums {
    sha256: String,
}

#[derive(Deserialize)]
struct FabricLoaderEntry {
    loader: FabricVersion,
}

#[derive(Deserialize)]
struct FabricVersion {
    version: String,
    #[serde(default)]
    stable: bool,
}

#[derive(Deserialize)]
struct AdoptiumAsset {
    binary: AdoptiumBinary,
}

#[derive(Deserialize)]
struct AdoptiumBinary {
    package: AdoptiumPackage,
}

#[derive(Deserialize)]
struct AdoptiumPackage {
    link: String,
    checksum: String,
    size: u64,
    #[serde(default)]
    name: String,
}

impl Upstream {
    pub fn new(config: &ArtifactsConfig) -> Result<Upstream, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(Duration::from_secs(15))
            // Per read, not per request: a 60 MB JRE on a slow link is fine, a stalled
            // connection is not.
            .read_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Upstream {
            client,
            config: config.clone(),
        })
    }

    /// Finds the file to download for `known` (the artifact at `path`) and the hash
    /// upstream publishes for it. `pinned` is the sha256 an earlier fetch recorded,
    /// used where upstream publishes none.
    pub async fn resolve(
        &self,
        path: &str,
        known: &Known,
        pinned: Option<String>,
    ) -> Result<Resolved, UpstreamError> {
        match known {
            Known::Vanilla { version } => self.resolve_vanilla(path, version).await,
            Known::Paper { version } => self.resolve_paper(path, version).await,
            Known::Fabric { version } => self.resolve_fabric(path, version, pinned).await,
            Known::Java { major } => self.resolve_java(path, major).await,
        }
    }

    async fn resolve_vanilla(&self, path: &str, version: &str) -> Result<Resolved, UpstreamError> {
        let manifest_url = join(&self.config.mojang_url, "/mc/game/version_manifest_v2.json");
        let manifest: MojangManifest = self
            .get_json(path, "the Mojang version manifest", &manifest_url)
            .await?
            .ok_or_else(|| status_error(path, "the Mojang version manifest", &manifest_url, 404))?;
        let Some(entry) = manifest.versions.into_iter().find(|v| v.id == version) else {
            return Err(UpstreamError::Unknown {
                path: path.into(),
                url: manifest_url,
                message: format!("Mojang's version manifest has no version '{version}'"),
            });
        };
        let what = "the Mojang version JSON";
        let info: MojangVersion = self
            .get_json(path, what, &entry.url)
            .await?
            .ok_or_else(|| status_error(path, what, &entry.url, 404))?;
        let Some(server) = info.downloads.get("server") else {
            return Err(UpstreamError::Unknown {
                path: path.into(),
                url: entry.url,
                message: format!("Mojang publishes no server jar for version '{version}'"),
            });
        };
        Ok(Resolved {
            url: server.url.clone(),
            expect: Expect::Sha1(server.sha1.to_ascii_lowercase()),
            size: Some(server.size),
            source: ArtifactSource::Mojang,
        })
    }

    async fn resolve_paper(&self, path: &str, version: &str) -> Result<Resolved, UpstreamError> {
        let url = join(
            &self.config.paper_url,
            &format!("/v3/projects/paper/versions/{version}/builds"),
        );
        let what = "the Paper build list";
        let unknown = |message: String| UpstreamError::Unknown {
            path: path.into(),
            url: url.clone(),
            message,
        };
        let builds: Vec<PaperBuild> = self
            .get_json(path, what, &url)
            .await?
            .ok_or_else(|| unknown(format!("Paper has no version '{version}'")))?;
        // Newest first: the newest stable build, else the newest of any channel.
        let Some(build) = builds
            .iter()
            .find(|b| b.channel.eq_ignore_ascii_case("STABLE"))
            .or_else(|| builds.first())
        else {
            return Err(unknown(format!(
                "Paper has no builds for version '{version}'"
            )));
        };
        let Some(dl) = build.downloads.get("server:default") else {
            return Err(UpstreamError::Format {
                path: path.into(),
                what,
                url: url.clone(),
                message: format!(
                    "build {} has no \"server:default\" download",
                    build
                        .id
                        .map(|i| i.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
            });
        };
        Ok(Resolved {
            url: dl.url.clone(),
            expect: Expect::Sha256(dl.checksums.sha256.to_ascii_lowercase()),
            size: Some(dl.size),
            source: ArtifactSource::Paper,
        })
    }

    async fn resolve_fabric(
        &self,
        path: &str,
        version: &str,
        pinned: Option<String>,
    ) -> Result<Resolved, UpstreamError> {
        let loaders_url = join(
            &self.config.fabric_url,
            &format!("/v2/versions/loader/{version}"),
        );
        let no_loader = || UpstreamError::Unknown {
            path: path.into(),
            url: loaders_url.clone(),
            message: format!("Fabric has no loader for Minecraft '{version}'"),
        };
        let loaders: Vec<FabricLoaderEntry> = self
            .get_json(path, "the Fabric loader list", &loaders_url)
            .await?
            .ok_or_else(no_loader)?;
        let loader = pick_stable(loaders.iter().map(|l| &l.loader)).ok_or_else(no_loader)?;

        let installers_url = join(&self.config.fabric_url, "/v2/versions/installer");
        let what = "the Fabric installer list";
        let installers: Vec<FabricVersion> = self
            .get_json(path, what, &installers_url)
            .await?
            .ok_or_else(|| status_error(path, what, &installers_url, 404))?;
        let installer = pick_stable(installers.iter()).ok_or_else(|| UpstreamError::Format {
            path: path.into(),
            what,
            url: installers_url.clone(),
            message: "no installer versions".into(),
        })?;
        // The versions go into a URL path: accept only what a path segment may hold.
        for (what, url, v) in [
            ("the Fabric loader list", &loaders_url, &loader.version),
            (what, &installers_url, &installer.version),
        ] {
            if super::validate_path(v).is_err() || v.contains('/') {
                return Err(UpstreamError::Format {
                    path: path.into(),
                    what,
                    url: url.clone(),
                    message: format!("unexpected version string '{v}'"),
                });
            }
        }
        Ok(Resolved {
            url: join(
                &self.config.fabric_url,
                &format!(
                    "/v2/versions/loader/{version}/{}/{}/server/jar",
                    loader.version, installer.version
                ),
            ),
            expect: Expect::TrustOnFirstUse(pinned),
            size: None,
            source: ArtifactSource::Fabric,
        })
    }

    async fn resolve_java(&self, path: &str, major: &str) -> Result<Resolved, UpstreamError> {
        let url = join(
            &self.config.adoptium_url,
            &format!(
                "/v3/assets/latest/{major}/hotspot?architecture=x64&image_type=jre&os=linux&vendor=eclipse"
            ),
        );
        let unknown = || UpstreamError::Unknown {
            path: path.into(),
            url: url.clone(),
            message: format!("Adoptium has no Linux x64 JRE for Java {major}"),
        };
        let assets: Vec<AdoptiumAsset> = self
            .get_json(path, "the Adoptium asset list", &url)
            .await?
            .ok_or_else(unknown)?;
        let Some(asset) = assets.into_iter().next() else {
            return Err(unknown());
        };
        let package = asset.binary.package;
        tracing::debug!(%path, package = %package.name, "Adoptium package chosen");
        Ok(Resolved {
            url: package.link,
            expect: Expect::Sha256(package.checksum.to_ascii_lowercase()),
            size: Some(package.size),
            source: ArtifactSource::Adoptium,
        })
    }

    /// GETs a JSON document; `None` when upstream answers 404 (it does not have it).
    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
        url: &str,
    ) -> Result<Option<T>, UpstreamError> {
        let request_error = |e: reqwest::Error| UpstreamError::Request {
            path: path.into(),
            what,
            url: url.into(),
            message: error_chain(&e),
        };
        let mut resp = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(METADATA_TIMEOUT)
            .send()
            .await
            .map_err(request_error)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error(path, what, url, status.as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(request_error)? {
            if body.len() + chunk.len() > MAX_METADATA_BYTES {
                return Err(UpstreamError::Format {
                    path: path.into(),
                    what,
                    url: url.into(),
                    message: format!("larger than {MAX_METADATA_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| UpstreamError::Format {
                path: path.into(),
                what,
                url: url.into(),
                message: e.to_string(),
            })
    }

    /// Streams `resolved.url` into `dest` (a new file), hashing as it goes and
    /// reporting `(bytes done, total)` after every chunk. Stops as soon as the body
    /// is longer than upstream said. The file is fsynced; checking the digests
    /// against [`Resolved::expect`] is the caller's job.
    pub async fn download(
        &self,
        path: &str,
        resolved: &Resolved,
        dest: &Path,
        progress: &(dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> Result<Downloaded, ArtifactError> {
        let url = resolved.url.as_str();
        let what = "the file";
        let request_error = |e: reqwest::Error| UpstreamError::Request {
            path: path.into(),
            what,
            url: url.into(),
            message: error_chain(&e),
        };
        let mut resp = self.client.get(url).send().await.map_err(request_error)?;
        if !resp.status().is_success() {
            return Err(status_error(path, what, url, resp.status().as_u16()).into());
        }
        let total = resolved.size.or(resp.content_length());
        if let (Some(expected), Some(actual)) = (resolved.size, resp.content_length())
            && expected != actual
        {
            return Err(UpstreamError::Size {
                path: path.into(),
                url: url.into(),
                expected,
                actual,
            }
            .into());
        }
        let limit = total.unwrap_or(MAX_UNSIZED_DOWNLOAD);
        let io = |what: &'static str| {
            let dest = dest.to_path_buf();
            move |source| ArtifactError::Io {
                what,
                path: dest,
                source,
            }
        };
        let mut file = tokio::fs::File::create(dest)
            .await
            .map_err(io("creating"))?;
        let mut sha256 = Sha256::new();
        let mut sha1 = Sha1::new();
        let mut done: u64 = 0;
        progress(0, total);
        while let Some(chunk) = resp.chunk().await.map_err(request_error)? {
            done += chunk.len() as u64;
            if done > limit {
                return Err(UpstreamError::Size {
                    path: path.into(),
                    url: url.into(),
                    expected: limit,
                    actual: done,
                }
                .into());
            }
            sha256.update(&chunk);
            sha1.update(&chunk);
            file.write_all(&chunk).await.map_err(io("writing"))?;
            progress(done, total);
        }
        file.flush().await.map_err(io("writing"))?;
        file.sync_all().await.map_err(io("syncing"))?;
        if let Some(expected) = total
            && done != expected
        {
            return Err(UpstreamError::Size {
                path: path.into(),
                url: url.into(),
                expected,
                actual: done,
            }
            .into());
        }
        Ok(Downloaded {
            size: done,
            sha256: hex(&sha256.finalize()),
            sha1: hex(&sha1.finalize()),
        })
    }
}

/// Checks a download against what upstream published; the error names the
/// artifact, the URL and both hashes.
pub fn verify(path: &str, resolved: &Resolved, got: &Downloaded) -> Result<(), UpstreamError> {
    let (algo, expected, actual) = match &resolved.expect {
        Expect::Sha1(h) => ("sha1", h, &got.sha1),
        Expect::Sha256(h) => ("sha256", h, &got.sha256),
        Expect::TrustOnFirstUse(Some(h)) => ("sha256 (recorded on first fetch)", h, &got.sha256),
        Expect::TrustOnFirstUse(None) => return Ok(()),
    };
    if !expected.eq_ignore_ascii_case(actual) {
        return Err(UpstreamError::Mismatch {
            algo,
            path: path.into(),
            url: resolved.url.clone(),
            expected: expected.clone(),
            actual: actual.clone(),
        });
    }
    Ok(())
}

/// The newest stable entry (lists are newest first), else the newest.
fn pick_stable<'a>(
    mut it: impl Iterator<Item = &'a FabricVersion> + Clone,
) -> Option<&'a FabricVersion> {
    it.clone().find(|v| v.stable).or_else(|| it.next())
}

fn join(base: &str, rest: &str) -> String {
    format!("{}{rest}", base.trim_end_matches('/'))
}

fn status_error(path: &str, what: &'static str, url: &str, status: u16) -> UpstreamError {
    UpstreamError::Status {
        path: path.into(),
        what,
        url: url.into(),
        status,
    }
}

/// reqwest's top-level message is often just "error sending request": add the causes.
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_mirror_path_conventions() {
        assert_eq!(
            Known::parse("minecraft/vanilla/1.21.4/server.jar"),
            Some(Known::Vanilla {
                version: "1.21.4".into()
            })
        );
        assert_eq!(
            Known::parse("minecraft/paper/1.21.4/server.jar"),
            Some(Known::Paper {
                version: "1.21.4".into()
            })
        );
        assert_eq!(
            Known::parse("minecraft/fabric/1.21.1/fabric-server.jar"),
            Some(Known::Fabric {
                version: "1.21.1".into()
            })
        );
        assert_eq!(
            Known::parse("java/21/OpenJDK21.tar.gz"),
            Some(Known::Java { major: "21".into() })
        );
        for other in [
            "java/21/OpenJDK17.tar.gz",
            "java/x/OpenJDKx.tar.gz",
            "minecraft/fabric/1.21.1/server.jar",
            "minecraft/forge/1.20.1/forge-installer.jar",
            "minecraft/vanilla/1.21.4/server.jar/extra",
        ] {
            assert_eq!(Known::parse(other), None, "{other}");
        }
    }

    #[test]
    fn joins_base_urls_with_or_without_a_trailing_slash() {
        assert_eq!(join("http://a/", "/b"), "http://a/b");
        assert_eq!(join("http://a", "/b"), "http://a/b");
    }
}
