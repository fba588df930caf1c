//! `GET /api/v1/openapi.json`: the API described in OpenAPI 3.1.

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::app::AppState;

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
    let with_id = |mut v: Value| {
        v["parameters"] = id_param();
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
                "get": with_id(op("The last console lines of the game (`{lines}`). Query: lines (1-1000, default 100)", "200", None)),
                "post": with_id(op("Send one line to the game's console (204)", "204", Some("ConsoleCommand")))
            },
            "/api/v1/servers/{id}/console/stream": {"get": with_id(op("WebSocket: recent console lines, then live ones", "101", None))},
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
                        "eula": {"type": "boolean", "description": "explicit acceptance of the game's EULA"}
                    }
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
                    "required": ["slug", "name", "game", "variant", "spec"],
                    "properties": {
                        "slug": {"type": "string"}, "name": {"type": "string"},
                        "game": {"type": "string"}, "variant": {"type": "string"},
                        "spec": {"type": "object", "example": crate::domain::templates::example_spec()}
                    }
                },
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
