//! The served OpenAPI document: the Blue Lobster contract as shipped, plus what this server
//! adds (the staff `/resources` endpoint, the rename, team and restore bodies, and the status
//! codes it can also answer). Built once at first use; a superset of
//! `bluelobster-openapi.json` by construction.

use axum::Json;
use serde_json::{json, Value};
use std::sync::OnceLock;

const CONTRACT: &str = include_str!("../../openapi/bluelobster-openapi.json");

pub async fn document() -> Json<Value> {
    Json(served().clone())
}

pub fn served() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc: Value =
            serde_json::from_str(CONTRACT).expect("embedded OpenAPI document is valid JSON");
        augment(&mut doc);
        doc
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorResponse" } } }
    })
}

fn augment(doc: &mut Value) {
    doc["info"]["x-served-by"] = json!("lobster");
    doc["components"]["schemas"]["ErrorResponse"] = json!({
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": { "type": "string" },
            "message": { "type": "string" },
            "details": { "type": "object" }
        },
        "additionalProperties": true
    });
    doc["components"]["schemas"]["RenameRequest"] = json!({
        "type": "object",
        "required": ["name"],
        "properties": { "name": { "type": "string", "minLength": 3, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$" } }
    });
    doc["paths"]["/api/v1/resources"] = json!({
        "get": {
            "tags": ["INSTANCES"],
            "summary": "Host resources (staff)",
            "description": "Free cores, memory (GB), storage (GB) and GPUs per host, from the same reservations placement uses. Staff keys only.",
            "operationId": "get_resources_api_v1_resources_get",
            "security": [{ "APIKeyHeader": [] }],
            "responses": {
                "200": { "description": "Hosts and their free capacity", "content": { "application/json": { "schema": { "type": "object" } } } }
            }
        }
    });
    doc["components"]["schemas"]["TeamAssignRequest"] = json!({
        "type": "object",
        "required": ["team_id"],
        "properties": { "team_id": { "type": "string" } }
    });
    doc["paths"]["/api/v1/instances/{instance_id}/team"]["put"]["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/TeamAssignRequest" } } }
    });
    // The console's own description says GET; both are served.
    let mut console_get = doc["paths"]["/api/v1/instances/{instance_id}/console"]["post"].clone();
    console_get["operationId"] =
        json!("get_console_ticket_api_v1_instances__instance_id__console_get");
    doc["paths"]["/api/v1/instances/{instance_id}/console"]["get"] = console_get;
    doc["paths"]["/api/v1/instances/{instance_id}/rename"]["put"]["requestBody"] = json!({
        "required": true,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RenameRequest" } } }
    });
    // The contract's prose asks for `backup_volid` in the body, its operation declares no
    // body: a client generated from the document could not send it. Not required as a body:
    // without one the answer is the contract's 400 `missing_backup_volid`.
    doc["components"]["schemas"]["RestoreRequest"] = json!({
        "type": "object",
        "required": ["backup_volid"],
        "properties": { "backup_volid": { "type": "string", "description": "Volume ID of the backup to restore (from list backups)" } }
    });
    doc["paths"]["/api/v1/instances/{instance_id}/restore"]["post"]["requestBody"] = json!({
        "required": false,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RestoreRequest" } } }
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            let secured = op.get("security").is_some() || path != "/api/v1/health";
            let responses = op["responses"].as_object_mut().expect("responses");
            let mut add = |code: &str, what: &str| {
                responses
                    .entry(code.to_string())
                    .or_insert_with(|| error_response(what));
            };
            if secured && path != "/api/v1/health" && path != "/api/v1/openapi.json" {
                add("401", "Invalid or missing API key");
                add("403", "Permission denied");
                // Only where the operator set `[rate_limit] requests_per_minute`.
                add("429", "Too many requests for this API key; see Retry-After");
            }
            let instance_path = path.contains("{instance_id}") || path.contains("{vm_uuid}");
            if instance_path {
                add("404", "Instance not found");
            }
            if method != "get" {
                add("413", "Request body too large");
                if instance_path {
                    add("400", "Invalid state for this operation");
                    add("409", "Another operation is in progress on this instance");
                }
            }
            if path.ends_with("/launch-instance") || path.ends_with("/launch-custom") {
                add("400", "Invalid request parameters");
                add("409", "Resource conflict");
            }
            if path == "/api/v1/backups/restore" {
                // The backup still being created or deleted, the target busy, or the new
                // instance's name taken.
                add("409", "Backup or target busy, or name already in use");
            }
            if path != "/api/v1/health" && path != "/api/v1/openapi.json" {
                // Every operation that reaches the database: a database that did not answer
                // in time (a read or a write whose outcome is unknown), a write PostgreSQL
                // failed to break a deadlock (nothing was written); a hypervisor that does
                // not answer in time (console, stats); and a server still starting.
                add("503", "Service unavailable; try again");
            } else {
                // A server answers from the moment it listens, 503 until it is ready
                // (`lobster_api::starting`).
                add("503", "The server is starting; try again shortly");
            }
            add("422", "Validation Error");
            // A path or query carrying a NUL character (`refuse_nul_in_uri`).
            add("400", "Invalid request: NUL characters are not allowed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path, method, parameter and response of the contract is still in the served
    /// document, unchanged.
    #[test]
    fn served_document_is_a_superset_of_the_contract() {
        let contract: Value = serde_json::from_str(CONTRACT).unwrap();
        let served = served();
        for (path, item) in contract["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let s = &served["paths"][path][method];
                assert!(s.is_object(), "{method} {path} missing");
                assert_eq!(
                    s["parameters"], op["parameters"],
                    "{method} {path} parameters"
                );
                for (code, resp) in op["responses"].as_object().unwrap() {
                    assert_eq!(&s["responses"][code], resp, "{method} {path} {code}");
                }
                if op.get("requestBody").is_some() {
                    assert_eq!(s["requestBody"], op["requestBody"]);
                }
            }
        }
        for (name, schema) in contract["components"]["schemas"].as_object().unwrap() {
            assert_eq!(
                &served["components"]["schemas"][name], schema,
                "schema {name}"
            );
        }
    }

    /// Every operation that reaches the database or a host says it may answer 503 (the
    /// database or the host did not answer in time); the health check and the document
    /// itself too, as every operation may while the server starts.
    #[test]
    fn operations_that_reach_the_database_document_503() {
        let served = served();
        let codes = |path: &str, method: &str| -> Vec<String> {
            let r = served["paths"][path][method]["responses"].as_object();
            r.unwrap_or_else(|| panic!("{method} {path}"))
                .keys()
                .cloned()
                .collect()
        };
        let has = |path: &str, method: &str| codes(path, method).contains(&"503".to_string());
        assert!(has("/api/v1/instances/{instance_id}/stats", "get"));
        assert!(has("/api/v1/instances/{instance_id}/console", "post"));
        assert!(has("/api/v1/instances/{instance_id}", "get"));
        assert!(has("/api/v1/instances", "get"));
        assert!(has("/api/v1/tasks", "get"));
        assert!(has("/api/v1/health", "get"));
    }

    /// A restore's conflicts (the backup busy, the target busy, a name taken) are 409s.
    #[test]
    fn restore_documents_its_conflicts() {
        let served = served();
        let r = &served["paths"]["/api/v1/backups/restore"]["post"]["responses"];
        assert!(r.get("409").is_some());
    }

    /// The bodies the server reads where the contract's operation declares none (its prose
    /// names them) are described, so that a client generated from the served document sends
    /// them.
    #[test]
    fn served_document_describes_the_bodies_the_contract_only_names_in_prose() {
        let served = served();
        let body = |path: &str, method: &str| {
            let r = &served["paths"][path][method]["requestBody"]["content"]["application/json"]
                ["schema"]["$ref"];
            let name = r
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no body"));
            served["components"]["schemas"][name.trim_start_matches("#/components/schemas/")]
                .clone()
        };
        let restore = body("/api/v1/instances/{instance_id}/restore", "post");
        assert_eq!(restore["required"], json!(["backup_volid"]));
        assert_eq!(restore["properties"]["backup_volid"]["type"], "string");
        assert_eq!(
            body("/api/v1/instances/{instance_id}/rename", "put")["required"],
            json!(["name"])
        );
        assert_eq!(
            body("/api/v1/instances/{instance_id}/team", "put")["required"],
            json!(["team_id"])
        );
    }
}
