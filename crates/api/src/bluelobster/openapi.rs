//! The served OpenAPI document: the Blue Lobster contract as shipped, plus what this server
//! adds (the staff `/resources` endpoint, the rename body, and the status codes it can also
//! answer). Built once at first use; a superset of `bluelobster-openapi.json` by construction.

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
            if method != "get" || path.ends_with("/console") {
                // A write PostgreSQL failed to break a deadlock (nothing was written), or a
                // hypervisor that does not answer (console).
                add("503", "Service unavailable; try again");
            }
            add("422", "Validation Error");
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
}
