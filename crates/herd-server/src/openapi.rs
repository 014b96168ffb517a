//! The OpenAPI document of the API.

use serde_json::{Value, json};

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    json!({ "openapi": "3.1.0", "info": { "title": "herd", "version": env!("CARGO_PKG_VERSION") }, "paths": {} })
}
