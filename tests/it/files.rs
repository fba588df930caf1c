//! The files of a server through the JSON API of a real `zlh serve` and a real local
//! agent with the stand-in game: a world zip uploaded and extracted, a folder
//! downloaded and compared, edit, rename, delete; a matrix of hostile paths and
//! archives, each refused with nothing read or written outside the server directory;
//! a 2 GiB streamed upload and download under 64 MiB peak RSS in both processes.

use crate::support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::api::Api;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A running server of the stand-in game: its id and its directory on disk.
fn running_server(api: &Api, name: &str) -> (i64, PathBuf) {
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": name, "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    let s = api.wait_status(id, "running");
    let vmid = s["vmid"].as_i64().unwrap();
    let dir = api
        .served
        .data_dir
        .join("servers")
        .join(vmid.to_string())
        .join("agent")
        .join("server");
    assert!(dir.is_dir(), "{}", dir.display());
    (id, dir)
}

/// A raw request through the API with the admin's token: status and body bytes.
fn raw(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>) {
    let mut req = api
        .http
        .inner
        .request(method.parse().unwrap(), api.served.url(path))
        .bearer_auth(&api.token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    api.http.rt.block_on(async {
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.bytes().await.unwrap().to_vec())
    })
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in entries {
        if name.ends_with('/') {
            w.add_directory(*name, opts).unwrap();
        } else {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// A tar.gz with one entry whose name and type are written raw (the tar crate's own
/// path setters refuse `..`, as they should).
fn tar_gz_with(name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    b.append(&header, data).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn upload_extract_list_edit_download_rename_delete_and_a_hostile_matrix() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let (id, dir) = running_server(&api, "files");
    let f = |rest: &str| format!("/api/v1/servers/{id}/files{rest}");

    // A world zip: uploaded raw, extracted into a folder, listed.
    let level = b"level.dat bytes \x00\x01\x02".repeat(100);
    let region = (0..200_000u32)
        .flat_map(|i| i.to_le_bytes())
        .collect::<Vec<_>>();
    let world = zip_of(&[
        ("world/", b""),
        ("world/level.dat", &level),
        ("world/region/r.0.0.mca", &region),
        ("world/datapacks/pack/pack.mcmeta", b"{\"pack\":{}}"),
    ]);
    let (code, body) = raw(
        &api,
        "POST",
        &f("/upload?path=uploads.zip"),
        Some(world.clone()),
        &[],
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(std::fs::read(dir.join("uploads.zip")).unwrap(), world);
    let (code, body) = api.call(
        "POST",
        &f("/extract"),
        Some(json!({"path": "uploads.zip", "to": "imported"})),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["files"], 3);
    let (code, list) = api.call("GET", &f("?path=imported/world"), None);
    assert_eq!(code, 200, "{list}");
    let entries: Vec<(String, String)> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            ("datapacks".into(), "dir".into()),
            ("region".into(), "dir".into()),
            ("level.dat".into(), "file".into()),
        ]
    );
    let level_entry = &list["entries"][2];
    assert_eq!(level_entry["size"], level.len());
    assert!(level_entry["mtime"].as_str().unwrap().ends_with('Z'));

    // A text file: written atomically, read back whole and by range, edited.
    let (code, body) = api.call("POST", &f("/mkdir"), Some(json!({"path": "config/zlh"})));
    assert_eq!(code, 204, "{body}");
    let (code, _) = raw(
        &api,
        "PUT",
        &f("/content?path=config/zlh/motd.txt"),
        Some(b"hello world\n".to_vec()),
        &[],
    );
    assert_eq!(code, 200);
    let (code, text) = raw(
        &api,
        "GET",
        &f("/content?path=config/zlh/motd.txt"),
        None,
        &[],
    );
    assert_eq!((code, text.as_slice()), (200, &b"hello world\n"[..]));
    let (code, part) = raw(
        &api,
        "GET",
        &f("/content?path=config/zlh/motd.txt"),
        None,
        &[("Range", "bytes=6-10")],
    );
    assert_eq!((code, part.as_slice()), (206, &b"world"[..]));
    let (code, _) = raw(
        &api,
        "GET",
        &f("/content?path=config/zlh/motd.txt"),
        None,
        &[("Range", "bytes=99-")],
    );
    assert_eq!(code, 416);
    let (code, _) = raw(
        &api,
        "PUT",
        &f("/content?path=config/zlh/motd.txt"),
        Some(b"edited\n".to_vec()),
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        std::fs::read(dir.join("config/zlh/motd.txt")).unwrap(),
        b"edited\n"
    );
    assert!(
        !names(&dir.join("config/zlh"))
            .iter()
            .any(|n| n.contains("zlh-tmp")),
        "no temp file left behind"
    );

    // A multipart upload (the UI's plain form) lands in the folder under its own name.
    let form_body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ops.json\"\r\nContent-Type: application/json\r\n\r\n[]\r\n--XyZ--\r\n".to_vec();
    let (code, body) = raw(
        &api,
        "POST",
        &f("/upload?path=config"),
        Some(form_body),
        &[("Content-Type", "multipart/form-data; boundary=XyZ")],
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(std::fs::read(dir.join("config/ops.json")).unwrap(), b"[]");

    // A folder downloads as a tar.gz holding exactly what is on disk.
    let (code, tgz) = raw(&api, "GET", &f("/download?path=imported"), None, &[]);
    assert_eq!(code, 200);
    let out = tmp.path().join("unpacked");
    tar::Archive::new(flate2::read::GzDecoder::new(tgz.as_slice()))
        .unpack(&out)
        .unwrap();
    assert_eq!(std::fs::read(out.join("world/level.dat")).unwrap(), level);
    assert_eq!(
        std::fs::read(out.join("world/region/r.0.0.mca")).unwrap(),
        region
    );
    assert_eq!(
        std::fs::read(out.join("world/datapacks/pack/pack.mcmeta")).unwrap(),
        b"{\"pack\":{}}"
    );
    // A file downloads as itself.
    let (code, got) = raw(
        &api,
        "GET",
        &f("/download?path=imported/world/level.dat"),
        None,
        &[],
    );
    assert_eq!((code, got), (200, level.clone()));

    // Rename / move (never over an existing file), delete (a folder only recursively).
    let (code, body) = api.call(
        "POST",
        &f("/rename"),
        Some(json!({"from": "config/zlh/motd.txt", "to": "config/motd.txt"})),
    );
    assert_eq!(code, 204, "{body}");
    assert!(dir.join("config/motd.txt").is_file() && !dir.join("config/zlh/motd.txt").exists());
    let (code, body) = api.call(
        "POST",
        &f("/rename"),
        Some(json!({"from": "config/ops.json", "to": "config/motd.txt"})),
    );
    assert_eq!(code, 409, "{body}");
    let (code, body) = api.call("POST", &f("/delete"), Some(json!({"path": "config"})));
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recursive")
    );
    let (code, body) = api.call(
        "POST",
        &f("/delete"),
        Some(json!({"path": "config", "recursive": true})),
    );
    assert_eq!(code, 204, "{body}");
    assert!(!dir.join("config").exists());
    let (code, body) = api.call("POST", &f("/delete"), Some(json!({"path": "config"})));
    assert_eq!(code, 404, "{body}");

    // ---- The hostile matrix ----
    let agent_dir = dir.parent().unwrap().to_path_buf();
    let canary = agent_dir.join("canary.txt");
    std::fs::write(&canary, b"outside: never read, never written").unwrap();
    // Planted inside the directory, as a game or an upload could.
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd")).unwrap();
    std::os::unix::fs::symlink(&agent_dir, dir.join("out")).unwrap();
    std::os::unix::fs::symlink("../canary.txt", dir.join("up")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("pipe").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // Hostile archives, uploaded (an upload is just bytes in a file) then extracted.
    let symlink_zip = {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.add_symlink(
            "link",
            "/etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        w.finish().unwrap().into_inner()
    };
    let archives: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot.zip",
            zip_of(&[("ok.txt", b"fine"), ("../evil.txt", b"evil")]),
        ),
        ("deep.zip", zip_of(&[("a/../../evil.txt", b"evil")])),
        ("abs.zip", zip_of(&[("/tmp/zlh-evil.txt", b"evil")])),
        ("backslash.zip", zip_of(&[("..\\evil.txt", b"evil")])),
        ("link.zip", symlink_zip),
        (
            "dotdot.tar.gz",
            tar_gz_with("../evil.txt", tar::EntryType::Regular, None, b"evil"),
        ),
        (
            "abs.tar.gz",
            tar_gz_with("/tmp/zlh-evil.txt", tar::EntryType::Regular, None, b"evil"),
        ),
        (
            "symlink.tar.gz",
            tar_gz_with("link", tar::EntryType::Symlink, Some("/etc/passwd"), b""),
        ),
        (
            "hardlink.tar.gz",
            tar_gz_with("hard", tar::EntryType::Link, Some("/etc/passwd"), b""),
        ),
        (
            "fifo.tar.gz",
            tar_gz_with("fifo", tar::EntryType::Fifo, None, b""),
        ),
        (
            "device.tar.gz",
            tar_gz_with("dev", tar::EntryType::Char, None, b""),
        ),
    ];
    for (name, bytes) in &archives {
        let (code, body) = raw(
            &api,
            "POST",
            &f(&format!("/upload?path=hostile/{name}")),
            Some(bytes.clone()),
            &[],
        );
        assert!(
            code == 200 || code == 404,
            "{name}: {code} {}",
            String::from_utf8_lossy(&body)
        );
    }
    // The folder did not exist: create it, upload again.
    api.call("POST", &f("/mkdir"), Some(json!({"path": "hostile"})));
    for (name, bytes) in &archives {
        let (code, body) = raw(
            &api,
            "POST",
            &f(&format!("/upload?path=hostile/{name}")),
            Some(bytes.clone()),
            &[],
        );
        assert_eq!(code, 200, "{name}: {}", String::from_utf8_lossy(&body));
    }
    std::fs::write(dir.join("fine.zip"), zip_of(&[("x.txt", b"x")])).unwrap();

    let before_agent = names(&agent_dir);
    let before_server = names(&dir);
    let before_passwd = std::fs::read(Path::new("/etc/passwd")).unwrap();
    let get = |p: &str| ("GET", p.to_string(), None::<Value>, None::<Vec<u8>>);
    let post = |p: &str, b: Value| ("POST", p.to_string(), Some(b), None::<Vec<u8>>);
    let put = |p: &str| ("PUT", p.to_string(), None::<Value>, Some(b"evil".to_vec()));
    let mut cases = vec![
        // (request, expected status)
        (get(&f("?path=..")), 400),
        (get(&f("?path=../")), 400),
        (get(&f("?path=a/../..")), 400),
        (get(&f("?path=%2e%2e")), 400),
        (get(&f("?path=%252e%252e")), 400),
        (get(&f("?path=x%252f..%252f..")), 400),
        (get(&f("/content?path=/etc/passwd")), 400),
        (get(&f("/content?path=%2Fetc%2Fpasswd")), 400),
        (get(&f("/content?path=x%00.txt")), 400),
        (get(&f("/content?path=..%5C..%5Cetc%5Cpasswd")), 400),
        (get(&f("/content?path=passwd")), 403),
        (get(&f("/download?path=passwd")), 403),
        (get(&f("/content?path=up")), 403),
        (get(&f("?path=out")), 403),
        (get(&f("/content?path=out/canary.txt")), 403),
        (get(&f("/download?path=out")), 403),
        (get(&f("/content?path=pipe")), 403),
        (get(&f("/download?path=pipe")), 403),
        (put(&f("/content?path=out/evil.txt")), 403),
        (put(&f("/content?path=../evil.txt")), 400),
        (put(&f("/content?path=pipe")), 403),
        (put(&f("/content?path=%2Ftmp%2Fzlh-evil.txt")), 400),
        (
            (
                "POST",
                f("/upload?path=out/evil.bin"),
                None,
                Some(b"evil".to_vec()),
            ),
            403,
        ),
        (post(&f("/mkdir"), json!({"path": "out/evil"})), 403),
        (post(&f("/mkdir"), json!({"path": "../evil"})), 400),
        (
            post(&f("/rename"), json!({"from": "passwd", "to": "../stolen"})),
            400,
        ),
        (
            post(
                &f("/rename"),
                json!({"from": "out/canary.txt", "to": "stolen.txt"}),
            ),
            403,
        ),
        (
            post(
                &f("/rename"),
                json!({"from": "fine.zip", "to": "out/fine.zip"}),
            ),
            403,
        ),
        (post(&f("/delete"), json!({"path": "out/canary.txt"})), 403),
        (
            post(&f("/delete"), json!({"path": "..", "recursive": true})),
            400,
        ),
        (
            post(&f("/delete"), json!({"path": "", "recursive": true})),
            400,
        ),
        (
            post(&f("/extract"), json!({"path": "fine.zip", "to": "out"})),
            403,
        ),
        (
            post(&f("/extract"), json!({"path": "fine.zip", "to": "../evil"})),
            400,
        ),
        (post(&f("/extract"), json!({"path": "out/x.zip"})), 403),
    ];
    for (name, _) in &archives {
        cases.push((
            post(
                &f("/extract"),
                json!({"path": format!("hostile/{name}"), "to": "unpacked"}),
            ),
            422,
        ));
    }
    assert!(cases.len() >= 25);
    for ((method, path, json_body, raw_body), want) in &cases {
        let (code, body) = match (json_body, raw_body) {
            (Some(j), _) => {
                let (c, b) = api.call(method, path, Some(j.clone()));
                (c, b.to_string())
            }
            (None, b) => {
                let (c, b) = raw(&api, method, path, b.clone(), &[]);
                (c, String::from_utf8_lossy(&b).into_owned())
            }
        };
        assert_eq!(code, *want, "{method} {path} {json_body:?}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            !v["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{method} {path}: a clear message: {body}"
        );
        assert!(
            !body.contains("root:x:0:0"),
            "{method} {path}: /etc/passwd leaked"
        );
    }
    // Nothing read or written outside; nothing left of the refused writes inside.
    assert_eq!(
        std::fs::read(&canary).unwrap(),
        b"outside: never read, never written"
    );
    assert_eq!(
        names(&agent_dir),
        before_agent,
        "the agent dir (the parent) is unchanged"
    );
    assert_eq!(
        names(&dir),
        before_server,
        "refused requests left nothing behind"
    );
    assert!(
        !dir.join("unpacked").exists(),
        "a refused archive writes nothing"
    );
    assert!(!Path::new("/tmp/zlh-evil.txt").exists());
    assert!(!dir.parent().unwrap().join("evil.txt").exists());
    assert_eq!(
        std::fs::read(Path::new("/etc/passwd")).unwrap(),
        before_passwd
    );
    // The planted links are listed as links, and deleting one removes the link only.
    let (_, list) = api.call("GET", &f(""), None);
    let kind = |n: &str| {
        list["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .map(|e| e["kind"].clone())
    };
    assert_eq!(kind("passwd"), Some(json!("symlink")));
    assert_eq!(kind("pipe"), Some(json!("special")));
    let (code, _) = api.call("POST", &f("/delete"), Some(json!({"path": "out"})));
    assert_eq!(code, 204);
    assert!(canary.exists() && agent_dir.is_dir());
}

#[test]
fn another_users_server_is_not_found_on_every_file_route() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let (id, dir) = running_server(&api, "mine");
    std::fs::write(dir.join("secret.txt"), b"admin's").unwrap();
    let run = |args: &[&str]| {
        let out = support::zlh(tmp.path())
            .args(args)
            .arg("--data-dir")
            .arg(&api.served.data_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&["user", "add", "bob"]);
    let bob = run(&["token", "create", "--user", "bob"]);
    let before = names(&dir);
    let f = |rest: &str| format!("/api/v1/servers/{id}/files{rest}");
    let routes = [
        ("GET", f("?path="), None),
        ("GET", f("/content?path=secret.txt"), None),
        ("PUT", f("/content?path=secret.txt"), Some(b"bob".to_vec())),
        ("POST", f("/upload?path=bob.txt"), Some(b"bob".to_vec())),
        ("GET", f("/download?path="), None),
        ("POST", f("/mkdir"), Some(br#"{"path":"bob"}"#.to_vec())),
        (
            "POST",
            f("/rename"),
            Some(br#"{"from":"secret.txt","to":"b.txt"}"#.to_vec()),
        ),
        (
            "POST",
            f("/delete"),
            Some(br#"{"path":"secret.txt"}"#.to_vec()),
        ),
        ("POST", f("/extract"), Some(br#"{"path":"x.zip"}"#.to_vec())),
    ];
    for (method, path, body) in routes {
        let mut req = api
            .http
            .inner
            .request(method.parse().unwrap(), api.served.url(&path))
            .bearer_auth(&bob);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let (code, text) = api.http.rt.block_on(async {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        assert_eq!(code, 404, "{method} {path}: {text}");
        assert!(!text.contains("admin's"));
        // The same answer as for a server that does not exist.
        let missing = path.replace(&format!("/servers/{id}/"), "/servers/999999/");
        let code2 = api.http.rt.block_on(async {
            let mut r = api
                .http
                .inner
                .request(method.parse().unwrap(), api.served.url(&missing))
                .bearer_auth(&bob);
            if method != "GET" {
                r = r.header("content-type", "application/json").body("{}");
            }
            r.send().await.unwrap().status().as_u16()
        });
        assert_eq!(code2, 404, "{method} {missing}");
    }
    assert_eq!(names(&dir), before, "nothing changed");
    assert_eq!(std::fs::read(dir.join("secret.txt")).unwrap(), b"admin's");
    // The admin rule: another admin reaches every server's files.
    run(&["user", "add", "second-admin", "--admin"]);
    let admin2 = run(&["token", "create", "--user", "second-admin"]);
    let (code, text) = api.http.rt.block_on(async {
        let r = api
            .http
            .inner
            .get(api.served.url(&f("/content?path=secret.txt")))
            .bearer_auth(&admin2)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!((code, text.as_str()), (200, "admin's"));
}

/// Peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_2_gib_upload_and_download_stream_with_both_processes_under_64_mib() {
    const SIZE: u64 = 2 << 30;
    const CHUNK: usize = 1 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let (id, dir) = running_server(&api, "big");
    let agent_pid: u32 =
        std::fs::read_to_string(dir.parent().unwrap().parent().unwrap().join("agent.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let serve_pid = api.served.pid();
    let before = (peak_rss_kib(serve_pid), peak_rss_kib(agent_pid));

    // The body is made on the fly: 2048 chunks of 1 MiB, each stamped with its index.
    let chunk_of = |i: u64| {
        let mut c = vec![(i % 251) as u8; CHUNK];
        c[..8].copy_from_slice(&i.to_le_bytes());
        bytes::Bytes::from(c)
    };
    let body = futures_util::stream::iter(0..SIZE / CHUNK as u64)
        .map(move |i| Ok::<_, std::io::Error>(chunk_of(i)));
    let started = std::time::Instant::now();
    let (code, text) = api.http.rt.block_on(async {
        let r = api
            .http
            .inner
            .post(
                api.served
                    .url(&format!("/api/v1/servers/{id}/files/upload?path=big.bin")),
            )
            .bearer_auth(&api.token)
            .header("content-length", SIZE)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    let up = started.elapsed();
    assert_eq!(code, 200, "{text}");
    let meta = std::fs::metadata(dir.join("big.bin")).unwrap();
    assert_eq!(meta.len(), SIZE);
    {
        let mut f = std::fs::File::open(dir.join("big.bin")).unwrap();
        let mut c = vec![0u8; CHUNK];
        for i in [0u64, 1, 1000, SIZE / CHUNK as u64 - 1] {
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(i * CHUNK as u64)).unwrap();
            f.read_exact(&mut c).unwrap();
            assert_eq!(c, chunk_of(i).to_vec(), "chunk {i}");
        }
    }

    // And back, counted as it streams.
    let started = std::time::Instant::now();
    let got = api.http.rt.block_on(async {
        let r = api
            .http
            .inner
            .get(
                api.served
                    .url(&format!("/api/v1/servers/{id}/files/download?path=big.bin")),
            )
            .bearer_auth(&api.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let mut s = r.bytes_stream();
        let mut n = 0u64;
        while let Some(c) = s.next().await {
            n += c.unwrap().len() as u64;
        }
        n
    });
    let down = started.elapsed();
    assert_eq!(got, SIZE);
    let after = (peak_rss_kib(serve_pid), peak_rss_kib(agent_pid));
    println!(
        "2 GiB: upload {up:?}, download {down:?}; peak RSS zlh serve {} -> {} KiB, agent {} -> {} KiB",
        before.0, after.0, before.1, after.1
    );
    assert!(after.0 < 64 * 1024, "zlh serve peaked at {} KiB", after.0);
    assert!(after.1 < 64 * 1024, "the agent peaked at {} KiB", after.1);
    std::fs::remove_file(dir.join("big.bin")).unwrap();
}

#[test]
fn browser_files_tab_lists_edits_uploads_and_deletes_with_confirmation() {
    use support::browser::Browser;
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let (id, dir) = running_server(&api, "filesui");
    std::fs::create_dir_all(dir.join("world/datapacks")).unwrap();
    std::fs::write(dir.join("world/level.dat"), [0u8, 1, 2, 3, 255]).unwrap();
    std::fs::write(dir.join("notes.txt"), "first line\n").unwrap();
    let added = support::add_admin(&api.served, "files-admin", "files-admin-password");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::start(&shots);
    let long = Duration::from_secs(30);
    b.goto(&api.served.url("/login"));
    b.find("#username").send_keys("files-admin");
    b.find("#password").send_keys("files-admin-password");
    b.find("form.stack button").click();
    b.wait_text("h1", "Dashboard", long);

    // The tab from the server's page; folders first, breadcrumbs.
    b.goto(&api.served.url(&format!("/servers/{id}")));
    b.find("nav.tabs a[href$='/files']").click();
    b.wait_text("#files-crumbs", "server", long);
    let listing = b.find("table.files").text();
    assert!(
        listing.contains("world/") && listing.contains("notes.txt"),
        "{listing}"
    );
    assert!(listing.find("world/").unwrap() < listing.find("notes.txt").unwrap());
    b.screenshot("server-files");

    // Into a folder and back by the breadcrumbs.
    b.find("table.files a[href*='path=world']").click();
    b.wait_text("#files-crumbs", "world", long);
    assert!(b.find("table.files").text().contains("level.dat"));
    // A binary file does not open in the editor: it is download-only.
    b.find("table.files a[href*='/files/edit?path=world/level.dat']")
        .click();
    b.wait_text("main", "not a text file: download it instead", long);
    b.back();
    b.wait_text("#files-crumbs", "world", long);
    b.find("#files-crumbs a").click();
    b.wait_until("the top folder", long, |b| {
        (!b.find("#files-crumbs").text().contains("world")).then_some(())
    });

    // The editor: a text file in a textarea, saved atomically.
    b.find("table.files a[href*='/files/edit?path=notes.txt']")
        .click();
    b.wait_until("the editor", long, |b| b.try_find("#file-text").map(|_| ()));
    b.screenshot("server-file-edit");
    b.find("#file-text").clear();
    b.find("#file-text")
        .send_keys("edited in the browser\nsecond line\n");
    b.find(".file-editor button[type=submit]").click();
    b.wait_until("the listing after saving", long, |b| {
        b.try_find("table.files").map(|_| ())
    });
    support::wait_for("the saved file", long, || {
        std::fs::read_to_string(dir.join("notes.txt"))
            .ok()
            .filter(|t| t == "edited in the browser\nsecond line\n")
    });

    // Upload through the plain form.
    let local = tmp.path().join("whitelist.json");
    std::fs::write(&local, "[]\n").unwrap();
    b.find("#upload-file").send_keys(local.to_str().unwrap());
    b.find("#upload-form button").click();
    b.wait_text("table.files", "whitelist.json", long);
    assert_eq!(std::fs::read(dir.join("whitelist.json")).unwrap(), b"[]\n");

    // A world zip, uploaded and extracted from the tab.
    let world_zip = tmp.path().join("myworld.zip");
    std::fs::write(
        &world_zip,
        zip_of(&[("level.dat", b"lvl"), ("region/r.0.0.mca", b"mca")]),
    )
    .unwrap();
    b.find("#upload-file")
        .send_keys(world_zip.to_str().unwrap());
    b.find("#upload-form button").click();
    b.wait_text("table.files", "myworld.zip", long);
    b.find("table.files form[action$='/files/extract'] button")
        .click();
    b.wait_text("table.files", "myworld/", long);
    assert_eq!(
        std::fs::read(dir.join("myworld/region/r.0.0.mca")).unwrap(),
        b"mca"
    );

    // New folder, rename, delete with a confirmation step.
    b.find("#new-folder").send_keys("datapacks");
    b.find("form[action$='/files/mkdir'] button").click();
    b.wait_text("table.files", "datapacks/", long);
    assert!(dir.join("datapacks").is_dir());
    b.find("#rename-1").clear();
    b.find("#rename-1").send_keys("packs");
    b.find("#rename-1 + button").click();
    b.wait_text("table.files", "packs/", long);
    assert!(dir.join("packs").is_dir() && !dir.join("datapacks").exists());
    b.find("table.files a[href*='delete=whitelist.json']")
        .click();
    b.wait_until("the confirmation", long, |b| {
        b.try_find("#confirm-delete").map(|_| ())
    });
    assert!(
        dir.join("whitelist.json").exists(),
        "nothing deleted before confirming"
    );
    b.screenshot("server-files-delete-confirm");
    b.find("#confirm-delete-button").click();
    support::wait_for("the deleted file", long, || {
        (!dir.join("whitelist.json").exists()).then_some(())
    });
}

#[test]
fn uploads_over_the_cap_are_refused_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let served = support::Served::start_with_env(
        tmp.path(),
        &tmp.path().join("data"),
        &[],
        &[
            ("ZLH_ARTIFACTS_UPSTREAM", "false"),
            ("ZLH_HTTP_MAX_UPLOAD_BYTES", "100000"),
        ],
    );
    let api = Api::start_on(tmp.path(), served);
    let (id, dir) = running_server(&api, "capped");
    let before = names(&dir);
    let url = |p: &str| api.served.url(&format!("/api/v1/servers/{id}/files{p}"));
    // Declared too large: refused before a byte is relayed.
    let (code, body) = raw(
        &api,
        "POST",
        &format!("/api/v1/servers/{id}/files/upload?path=big.bin"),
        Some(vec![7u8; 100_001]),
        &[],
    );
    assert_eq!(code, 413, "{}", String::from_utf8_lossy(&body));
    // Streamed without a length: cut once past the cap, the agent's temp file removed.
    for (method, path) in [
        ("POST", "/upload?path=big.bin"),
        ("PUT", "/content?path=big.bin"),
    ] {
        let chunks = futures_util::stream::iter(0..40)
            .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 10_000])));
        let code = api.http.rt.block_on(async {
            api.http
                .inner
                .request(method.parse().unwrap(), url(path))
                .bearer_auth(&api.token)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!(code, 413, "{method} {path}");
    }
    support::wait_for("no temp file left", Duration::from_secs(10), || {
        (names(&dir) == before).then_some(())
    });
    // The UI's forms need the session's CSRF token: a multipart upload carries it in
    // the query (its body is streamed, not read to find it).
    let cookie = support::ui_session(&api.served);
    let form = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\nx\r\n--XyZ--\r\n";
    for (path, ctype, body) in [
        (
            format!("/servers/{id}/files/upload?path="),
            "multipart/form-data; boundary=XyZ",
            form.to_vec(),
        ),
        (
            format!("/servers/{id}/files/upload?path=&csrf=wrong"),
            "multipart/form-data; boundary=XyZ",
            form.to_vec(),
        ),
        (
            format!("/servers/{id}/files/mkdir"),
            "application/x-www-form-urlencoded",
            b"dir=&name=x".to_vec(),
        ),
        (
            format!("/servers/{id}/files/delete"),
            "application/x-www-form-urlencoded",
            b"dir=&name=eula.txt".to_vec(),
        ),
    ] {
        let code = api.http.rt.block_on(async {
            support::ui_client()
                .post(api.served.url(&path))
                .header("cookie", &cookie)
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        assert_eq!(code, 403, "{path} without the CSRF token");
    }
    assert_eq!(names(&dir), before, "nothing written without a CSRF token");

    // Within the cap it goes through.
    let (code, _) = raw(
        &api,
        "POST",
        &format!("/api/v1/servers/{id}/files/upload?path=ok.bin"),
        Some(vec![7u8; 100_000]),
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(
        std::fs::metadata(dir.join("ok.bin")).unwrap().len(),
        100_000
    );
}
