//! `GET /api/v1/openapi.json`: the API described in OpenAPI 3.1.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(|| async { Json(document()) }))
}

fn op(summary: &str, ok: &str, body: Option<&str>) -> Value {
    let mut o = json!({
        "summary": summary,
        "responses": {
            ok: {"description": "success"},
            "400": {"$ref": "#/components/responses/Error"},
            "401": {"$ref": "#/components/responses/Error"},
            "404": {"$ref": "#/components/responses/Error"},
            "409": {"$ref": "#/components/responses/Error"}
        }
    });
    if let Some(schema) = body {
        o["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
        });
    }
    o
}

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}])
}

/// The JSON Schema of a template's `spec` (domain::templates::TemplateSpec); a test
/// keeps its properties and the struct's fields the same.
pub fn template_spec_schema() -> Value {
    let placeholders = |which: &str| format!("placeholders: {which}");
    let text_map = |what: &str| json!({"type": "object", "additionalProperties": {"type": "string"}, "description": what});
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["java", "readiness", "default_memory_mb", "default_cores", "edge", "eula_required"],
        "properties": {
            "artifact_path": {"type": ["string", "null"], "description": format!("the game's file in the artifact mirror (copied into the server directory; `{{jar}}` of the start command); absent: nothing to download; {}", placeholders("{version}")), "example": "minecraft/vanilla/{version}/server.jar"},
            "java": {"type": "string", "enum": ["minecraft", "none"], "description": "minecraft: ship the Java runtime the Minecraft version needs (`{java}`); none: the start command brings its own runtime"},
            "mods": {"type": "array", "description": "mirror artifacts seeded before the first start", "items": {
                "type": "object", "additionalProperties": false, "required": ["path", "destination"],
                "properties": {
                    "path": {"type": "string", "description": format!("in the artifact mirror; {}", placeholders("{version}"))},
                    "destination": {"type": "string", "description": "relative path in the server directory"}
                }
            }},
            "files": {"type": "array", "description": "files with literal content seeded before the first start", "items": {
                "type": "object", "additionalProperties": false, "required": ["destination", "content"],
                "properties": {
                    "destination": {"type": "string", "description": "relative path in the server directory"},
                    "content": {"type": "string", "description": placeholders("{version} {name} {game_port} {ip} {forwarding_secret}")}
                }
            }},
            "start_command": {"type": ["string", "null"], "description": format!("run with /bin/sh in the server directory; {}; absent: `{{java}} -Xms{{memory_mb}}M -Xmx{{memory_mb}}M -jar {{jar}} nogui`", placeholders("{java} {jar} {memory_mb}"))},
            "stop_command": {"type": ["string", "null"], "description": "one line written to the game's console to stop it (then SIGTERM, then SIGKILL)", "example": "stop"},
            "readiness": {"type": "string", "enum": ["minecraft_ping", "tcp"], "description": "minecraft_ping: ready when a Server List Ping is answered; tcp: when the game port accepts"},
            "game_port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 25565, "description": "the game's port in its container (a local node picks one from its pool)"},
            "default_memory_mb": {"type": "integer", "minimum": 256, "maximum": 262144},
            "default_cores": {"type": "integer", "minimum": 1, "maximum": 64},
            "edge": {"type": "string", "enum": ["velocity", "traefik_tcp", "traefik_udp", "none"], "description": "how players reach the server"},
            "properties": text_map(&format!("server.properties keys; {}", placeholders("{version} {name} {game_port} {ip}"))),
            "env": text_map(&format!("extra environment of the game process; {}", placeholders("{version} {name} {game_port} {ip} {memory_mb}"))),
            "eula_required": {"type": "boolean", "description": "a create must send `eula: true`"},
            "third_party_server": {"type": "boolean", "default": false, "description": "game minecraft only: the server is not Mojang's software (e.g. flying-squid), so Mojang's EULA is not required"},
            "versions": {"type": "array", "items": {"type": "string"}, "description": "versions offered in pickers (others are accepted too)"}
        },
        "example": crate::domain::templates::example_spec()
    })
}

pub fn document() -> Value {
    let mut create = op(
        "Create a server (202: its provisioning job is queued)",
        "202",
        Some("CreateServer"),
    );
    create["parameters"] = json!([{
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Same key + same body returns the same server and job; same key + another body is 409.",
        "schema": {"type": "string", "maxLength": 200}
    }]);
    let mut action = op(
        "start | stop | restart | retry | reinstall (202: a job in the server's lane)",
        "202",
        None,
    );
    action["parameters"] = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
        {"name": "action", "in": "path", "required": true,
         "schema": {"type": "string", "enum": ["start", "stop", "restart", "retry", "reinstall"]}}
    ]);
    let mut job_action = op("retry | cancel | release a job (admin)", "200", None);
    job_action["parameters"] = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
        {"name": "action", "in": "path", "required": true,
         "schema": {"type": "string", "enum": ["retry", "cancel", "release"]}}
    ]);
    let mut player_action = op(
        "whitelist | unwhitelist | op | deop | ban | pardon | kick a player (ban and pardon also take an IP). Running: sent to the console and read back from the game's lists (200, outcome applied, confirmed). Otherwise: 202, outcome queued, a job in the server's lane applied once at the next ready (kick needs the game running: 409)",
        "200",
        Some("PlayerAction"),
    );
    player_action["requestBody"]["required"] = json!(false);
    player_action["responses"]["202"] = json!({"description": "queued for the next start"});
    player_action["parameters"] = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
        {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}, "description": "player name (1-16 letters, digits, _) or, for ban/pardon, an IP address"},
        {"name": "action", "in": "path", "required": true,
         "schema": {"type": "string", "enum": ["whitelist", "unwhitelist", "op", "deop", "ban", "pardon", "kick"]}}
    ]);
    let with_id = |mut v: Value| {
        v["parameters"] = id_param();
        v
    };
    // Paths are checked by the agent: 400 (malformed: `..`, absolute, NUL, backslash,
    // encoded separators), 403 (a link leading out, a special file), 413, 422.
    let files_op = |summary: &str, ok: &str, body: Option<&str>| {
        let mut v = with_id(op(summary, ok, body));
        for code in ["403", "413", "422", "502"] {
            v["responses"][code] = json!({"$ref": "#/components/responses/Error"});
        }
        if body.is_none()
            && let Some(p) = v["parameters"].as_array_mut()
        {
            p.push(json!({"name": "path", "in": "query", "required": false, "schema": {"type": "string"}}));
        }
        v
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "zlh API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Game-server control plane. Every route needs `Authorization: Bearer <API token>` (`zlh token create`). Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/servers": {
                "post": create,
                "get": op("List servers (yours; all for admins). Query: after, limit, status, q", "200", None)
            },
            "/api/v1/servers/{id}": {
                "get": with_id(op("One server", "200", None)),
                "delete": with_id(op("Delete a server (202: a delete job)", "202", None))
            },
            "/api/v1/servers/{id}/events": {"get": with_id(op("A server's state timeline", "200", None))},
            "/api/v1/servers/{id}/console": {
                "get": with_id(op("The last console lines of the game (`{lines}`), terminal control sequences removed. Query: lines (1-1000, default 100); raw=1 keeps the lines as the game wrote them", "200", None)),
                "post": with_id(op("Send one line to the game's console (204)", "204", Some("ConsoleCommand")))
            },
            "/api/v1/servers/{id}/console/stream": {"get": with_id(op("WebSocket: recent console lines, then live ones, as text (query raw=1: as the game wrote them)", "101", None))},
            "/api/v1/servers/{id}/files": {"get": files_op("List a folder of the server directory (`{path, entries: [{name, kind: file|dir|symlink|special, size, mtime}]}`); query path (default: the server directory)", "200", None)},
            "/api/v1/servers/{id}/files/content": {
                "get": files_op("Read a file (application/octet-stream); honours one `Range: bytes=` (206)", "200", None),
                "put": files_op("Write a file atomically from the raw body (temp file, fsync, rename); capped by http.max_upload_bytes (413)", "200", None)
            },
            "/api/v1/servers/{id}/files/upload": {"post": files_op("Upload, streamed: a raw body is the file `path`; a multipart form's file field goes into the folder `path` under its own name. Capped by http.max_upload_bytes (413)", "200", None)},
            "/api/v1/servers/{id}/files/download": {"get": files_op("Download a file, or a folder as a streamed tar.gz (links and special files left out)", "200", None)},
            "/api/v1/servers/{id}/files/mkdir": {"post": files_op("Create a folder and any missing parents (204)", "204", Some("FilePath"))},
            "/api/v1/servers/{id}/files/rename": {"post": files_op("Rename or move (204; never replaces: 409 when `to` exists)", "204", Some("FileRename"))},
            "/api/v1/servers/{id}/files/delete": {"post": files_op("Delete a file or link; a folder only with `recursive: true` (204)", "204", Some("FilePath"))},
            "/api/v1/servers/{id}/files/extract": {"post": files_op("Extract a .zip, .tar.gz or .tgz into the folder `to` (created if missing). The archive is checked first: entries with `..`, absolute paths, links or special files refuse it whole (422) before anything is written", "200", Some("FileExtract"))},
            "/api/v1/servers/{id}/properties": {
                "get": with_id(op("The server's server.properties: every key in file order, the typed keys of the editor, the read-only keys zlh manages, and restart_needed (the running game started with another file)", "200", None)),
                "put": with_id(op("Set keys (every other byte of the file kept): typed keys are checked (400 names the key), managed keys are refused (400 names the key); nothing is written when one is refused. A running game needs a restart to see it (restart_needed)", "200", Some("PropertiesEdit")))
            },
            "/api/v1/servers/{id}/players": {"get": with_id(op("Players: online count and names (status ping; the list command while running), whitelist, ops, banned players and IPs as the game's JSON lists hold them, and queued actions (pending)", "200", None))},
            "/api/v1/servers/{id}/players/{name}/{action}": {"post": player_action},
            "/api/v1/servers/{id}/version": {"post": with_id(op("Change the version the server runs (202 {job, warning}; local nodes): one job in the server's lane takes a protected world backup noted \"before upgrade to X\", installs X keeping the world, starts it and waits for ready; when X is not ready by ready_deadline_secs (or fails), it rolls back automatically (old version and the world from that backup) and the timeline says why. A downgrade needs confirm_downgrade (400 naming it otherwise)", "202", Some("VersionChange")))},
            "/api/v1/servers/{id}/{action}": {"post": action},
            "/api/v1/jobs": {"get": op("List jobs (admin). Query: state, kind, before, limit", "200", None)},
            "/api/v1/jobs/{id}": {"get": with_id(op("One job with its errors (admin)", "200", None))},
            "/api/v1/jobs/{id}/{action}": {"post": job_action},
            "/api/v1/templates": {
                "get": op("List templates", "200", None),
                "post": op("Add a template (admin)", "201", Some("NewTemplate"))
            },
            "/api/v1/nodes": {
                "get": op("List nodes with free memory (admin)", "200", None),
                "post": op("Add a node (admin)", "201", Some("NewNode"))
            },
            "/api/v1/nodes/{id}/agents/upgrade": {"post": with_id(op("Upgrade every agent on the node to this zlh's binary (admin; 202: one job per server, in its lane)", "202", None))},
            "/api/v1/servers/{id}/agent": {"get": with_id(op("The version the server's agent last reported, and whether it is this zlh's", "200", None))},
            "/api/v1/servers/{id}/agent/upgrade": {"post": with_id(op("Upgrade the server's agent to this zlh's binary (admin; 202: a job in the server's lane)", "202", None))},
            "/api/v1/servers/{id}/backups": {
                "get": with_id(op("A server's world backups, newest first, with its retention policy. Query: all (include deleted)", "200", None)),
                "post": with_id(op("Back up the server's world (202: a job in the server's lane; body optional)", "202", Some("NewBackup")))
            },
            "/api/v1/servers/{id}/backups/retention": {
                "get": with_id(op("The server's backup retention policy", "200", None)),
                "put": with_id(op("Set the retention policy (protected backups are never pruned; 0/0 keeps everything)", "200", Some("Retention")))
            },
            "/api/v1/backups/{id}": {
                "get": with_id(op("One world backup", "200", None)),
                "delete": with_id(op("Delete a backup (202: a job; protected backups are refused with 409)", "202", None))
            },
            "/api/v1/backups/{id}/restore": {"post": with_id(op("Restore into the same server, or into a new server with `new_server` (202: a job)", "202", Some("Restore")))},
            "/api/v1/backups/{id}/protect": {"post": with_id(op("Protect a backup from retention and deletion", "200", None))},
            "/api/v1/backups/{id}/unprotect": {"post": with_id(op("Lift a backup's protection", "200", None))},
            "/api/v1/servers/{id}/schedules": {
                "get": with_id(op("A server's schedules with their next run", "200", None)),
                "post": with_id(op("Add a schedule: backup, restart (with an in-game warning) or console command", "201", Some("NewSchedule")))
            },
            "/api/v1/schedules/{id}": {"delete": with_id(op("Remove a schedule (and those chained after it)", "200", None))},
            "/api/v1/doctor": {"get": op("The doctor's report: duplicates, orphans, stuck servers and jobs, drift (admin). Query: server", "200", None)},
            "/api/v1/openapi.json": {"get": op("This document", "200", None)}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            },
            "schemas": {
                "FilePath": {
                    "type": "object", "required": ["path"], "additionalProperties": false,
                    "properties": {"path": {"type": "string", "description": "relative to the server directory"}, "recursive": {"type": "boolean", "default": false}}
                },
                "FileRename": {
                    "type": "object", "required": ["from", "to"], "additionalProperties": false,
                    "properties": {"from": {"type": "string"}, "to": {"type": "string"}}
                },
                "FileExtract": {
                    "type": "object", "required": ["path"], "additionalProperties": false,
                    "properties": {"path": {"type": "string", "description": "the archive"}, "to": {"type": "string", "description": "the folder to extract into (default: the server directory)"}}
                },
                "ConsoleCommand": {
                    "type": "object", "required": ["command"],
                    "properties": {"command": {"type": "string", "maxLength": 1000}}
                },
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"},
                        "field": {"type": ["string", "null"]}
                    }}}
                },
                "CreateServer": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["name", "template", "version"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"},
                        "template": {"type": "string", "description": "template slug, e.g. minecraft-vanilla"},
                        "version": {"type": "string", "example": "1.21.4"},
                        "memory_mb": {"type": "integer", "minimum": 256},
                        "cores": {"type": "integer", "minimum": 1, "maximum": 64},
                        "node": {"type": "string", "description": "node name; default: the one with the most free memory"},
                        "eula": {"type": "boolean", "description": "explicit acceptance of the game's EULA: required (400 naming eula without it) by templates with eula_required and by game minecraft templates unless third_party_server"}
                    }
                },
                "PropertiesEdit": {
                    "type": "object",
                    "description": "server.properties keys to set: typed keys (motd, max-players, difficulty, gamemode, pvp, …) are validated; unknown keys are kept as one-line text",
                    "additionalProperties": {"type": ["string", "integer", "boolean"]},
                    "example": {"max-players": 50, "difficulty": "hard"}
                },
                "VersionChange": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["version"],
                    "properties": {
                        "version": {"type": "string", "example": "1.21.4"},
                        "loader_version": {"type": "string", "description": "reserved: no built-in template takes a loader version yet (400 when sent)"},
                        "confirm_downgrade": {"type": "boolean", "default": false, "description": "required to move to an older version: worlds do not convert back"},
                        "ready_deadline_secs": {"type": "integer", "minimum": 10, "maximum": 3600, "default": 600, "description": "how long the new version gets to become ready before the rollback"}
                    }
                },
                "PlayerAction": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {"reason": {"type": "string", "maxLength": 200, "description": "ban and kick only"}}
                },
                "NewBackup": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {"note": {"type": "string", "maxLength": 500}}
                },
                "Retention": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["keep_last", "keep_daily"],
                    "properties": {
                        "keep_last": {"type": "integer", "minimum": 0, "description": "keep the newest N backups"},
                        "keep_daily": {"type": "integer", "minimum": 0, "description": "keep the newest backup of each of the last D days (UTC)"}
                    }
                },
                "Restore": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {"new_server": {"type": "string", "description": "name of a new server (a clone) to restore into; absent: the backup's own server"}}
                },
                "NewSchedule": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["kind"],
                    "properties": {
                        "kind": {"type": "string", "enum": ["backup", "restart", "command"]},
                        "cron": {"type": "string", "description": "5 fields (minute hour day-of-month month day-of-week) or 6 with a leading second, UTC; or @hourly, @daily, …", "example": "0 4 * * *"},
                        "after": {"type": "integer", "description": "fire after this schedule's firing succeeded, instead of a cron"},
                        "command": {"type": "string", "description": "kind command: the console command"},
                        "warning_secs": {"type": "integer", "minimum": 0, "maximum": 3600, "description": "kind restart: warn players this long before (default 300)"},
                        "note": {"type": "string"}
                    }
                },
                "NewTemplate": {
                    "type": "object",
                    "additionalProperties": false,
                    "description": "A template: how to install, start, probe and publish a game (docs/templates.md)",
                    "required": ["slug", "name", "game", "variant", "spec"],
                    "properties": {
                        "slug": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", "description": "what servers are created from (`template` of a create)"},
                        "name": {"type": "string", "minLength": 1, "maxLength": 100},
                        "game": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$", "description": "`minecraft` needs the EULA accepted unless spec.third_party_server"},
                        "variant": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
                        "spec": {"$ref": "#/components/schemas/TemplateSpec"}
                    }
                },
                "TemplateSpec": template_spec_schema(),
                "NewNode": {
                    "type": "object",
                    "required": ["name", "kind", "memory_mb"],
                    "properties": {
                        "name": {"type": "string"}, "kind": {"type": "string", "enum": ["local", "proxmox"]},
                        "memory_mb": {"type": "integer"}, "settings": {"type": "object"},
                        "vmid_min": {"type": "integer"}, "vmid_max": {"type": "integer"},
                        "port_min": {"type": "integer"}, "port_max": {"type": "integer"}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema names exactly the fields a template spec has.
    #[test]
    fn the_template_schema_matches_the_struct() {
        let mut spec: crate::domain::templates::TemplateSpec =
            serde_json::from_value(crate::domain::templates::example_spec()).unwrap();
        spec.third_party_server = true;
        spec.start_command = Some("x".into());
        spec.artifact_path = Some("x".into());
        let fields: std::collections::BTreeSet<String> = serde_json::to_value(&spec)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let schema = template_spec_schema();
        let documented: std::collections::BTreeSet<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(fields, documented);
        assert_eq!(
            document()["components"]["schemas"]["NewTemplate"]["properties"]["spec"]["$ref"],
            "#/components/schemas/TemplateSpec"
        );
    }
}
