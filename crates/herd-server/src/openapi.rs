//! The OpenAPI document of the API, generated from the handlers' and
//! types' annotations (utoipa): a route or field added without them is
//! missing from the document, and a test lists every route.

use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{batches, error, events, meta, submit, views};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "herd",
        description = "Batches of commands over HTTP: create, follow, inspect, cancel. Every 4xx and 5xx answer is an ErrorShape."
    ),
    paths(
        batches::create,
        batches::list,
        batches::get,
        batches::delete,
        batches::pause,
        batches::resume,
        batches::retry,
        batches::tasks,
        batches::task,
        batches::export,
        events::batch_events,
        events::all_events,
        meta::healthz,
        meta::metrics,
        meta::openapi,
    ),
    components(schemas(
        error::ErrorShape,
        submit::BatchRequest,
        submit::TaskRequest,
        views::BatchView,
        views::BatchPage,
        views::TaskView,
        views::TaskPage,
        views::AttemptView,
        views::EventView,
        views::Retried,
    )),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// The `bearer` security scheme the `/api` routes name.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document served at `/openapi.json`.
pub fn document() -> Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null)
}
