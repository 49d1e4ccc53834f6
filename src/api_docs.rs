//! The OpenAPI 3.1 document of the JSON API, generated from the handlers' `#[utoipa::path]`
//! annotations (each module contributes its `ApiDoc`) and served at `/api/openapi.json`, and
//! `/docs`, the same document as a page.
//!
//! `/docs` is rendered on the server from the document rather than by a JavaScript viewer: the
//! viewers (Swagger UI, Redoc, RapiDoc) need inline styles or `eval` that the pages' strict
//! Content-Security-Policy refuses, and a server-rendered page works without JavaScript, like
//! every other page. Tools take the JSON.

use actix_web::HttpResponse;
use utoipa::OpenApi as _;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Conclave",
        description = "Secure rooms for people, AI assistants and devices. Authenticate with the \
            session cookie (browsers; unsafe requests then need the `X-CSRF-Token` header from \
            the `csrf-token` meta tag or the `conclave_csrf` cookie) or with \
            `Authorization: Bearer <personal API token>`. Errors are RFC 9457 problem documents \
            whose `error` field is a stable code. No text may contain the NUL character \
            (`\\u0000`, `%00`): it is refused with 400.",
        license(name = "Proprietary")
    ),
    components(schemas(crate::error::Problem)),
    tags(
        (name = "auth", description = "Sign-up, sign-in, verification, password reset"),
        (name = "me", description = "The signed-in person"),
        (name = "2fa", description = "Two-factor authentication"),
        (name = "sessions", description = "Where I am signed in"),
        (name = "tokens", description = "Personal API tokens"),
        (name = "identities", description = "Connected sign-in providers"),
        (name = "tenants", description = "Workspaces, members, invitations"),
        (name = "operations", description = "Running the service"),
        (name = "realtime", description = "The WebSocket endpoint and live connections"),
    )
)]
struct Root;

/// Errors any operation may answer, whatever it does: the problem documents the shared layers
/// (authentication, the edge's rate limits, the database pool) produce. `document()` adds each
/// to every operation it applies to unless the operation describes that status itself, so
/// tools (schemathesis, client generators) know every status the API can send; `/docs` lists
/// them once instead of under every operation.
pub const COMMON_ERRORS: &[(&str, &str, Applies)] = &[
    (
        "400",
        "The request is invalid: the path, a field, the query string or the body; `detail` \
         says which.",
        Applies::Always,
    ),
    (
        "401",
        "Not signed in: no session, or the API token is unknown, expired or revoked.",
        Applies::Always,
    ),
    (
        "403",
        "Signed in, but not allowed: the role, the token's scopes or the edge policy refuses.",
        Applies::Always,
    ),
    (
        "404",
        "Nothing with that id, or nothing the caller may see (other workspaces' ids are \
         indistinguishable from missing ones).",
        Applies::WithInput,
    ),
    (
        "413",
        "The body is larger than the configured limit.",
        Applies::WithBody,
    ),
    (
        "415",
        "The body's Content-Type is not the one the operation takes.",
        Applies::WithBody,
    ),
    (
        "429",
        "Too many requests: a rate limit or quota; `Retry-After` says when to retry.",
        Applies::Always,
    ),
    (
        "503",
        "A dependency (the database) is busy or unreachable; retry after `Retry-After` seconds.",
        Applies::Always,
    ),
];

/// Which operations a common error applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    Always,
    /// Operations that take ids or other input: path or query parameters, or a body.
    WithInput,
    WithBody,
}

fn add_common_errors(operation: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let parameters_in = |place: ParameterIn| {
        operation.parameters.iter().flatten().any(|p| match p {
            RefOr::T(p) => p.parameter_in == place,
            RefOr::Ref(_) => false,
        })
    };
    let has_body = operation.request_body.is_some();
    let has_query = parameters_in(ParameterIn::Query);
    let has_path = parameters_in(ParameterIn::Path);
    for (status, description, applies) in COMMON_ERRORS {
        let applies = match applies {
            Applies::Always => true,
            Applies::WithInput => has_body || has_query || has_path,
            Applies::WithBody => has_body,
        };
        if !applies || operation.responses.responses.contains_key(*status) {
            continue;
        }
        let response = ResponseBuilder::new()
            .description(*description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        operation
            .responses
            .responses
            .insert((*status).to_owned(), RefOr::T(response));
    }
}

/// A string that is one of `values`, for fields whose values are checked by hand.
fn one_of(values: &[&str]) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// A threshold rule's comparison (`#[schema(schema_with = …)]`).
pub fn above_or_below() -> utoipa::openapi::Object {
    one_of(&["above", "below"])
}

/// A staff role to give, or `none` to take staff access away.
pub fn staff_role_or_none() -> utoipa::openapi::Object {
    one_of(&["owner", "admin", "operator", "viewer", "none"])
}

/// What an edge agent reports after applying a policy.
pub fn agent_status() -> utoipa::openapi::Object {
    one_of(&["applied", "check_failed", "error"])
}

/// A credit adjustment: any integer but zero.
pub fn nonzero_integer() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, OneOfBuilder, SchemaFormat, Type};
    let side = |bound: utoipa::openapi::ObjectBuilder| {
        bound
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .build()
    };
    OneOfBuilder::new()
        .item(side(utoipa::openapi::ObjectBuilder::new().minimum(Some(1))))
        .item(side(
            utoipa::openapi::ObjectBuilder::new().maximum(Some(-1)),
        ))
        .description(Some("Positive adds, negative takes away; not zero"))
        .build()
        .into()
}

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Root::openapi();
    for part in [
        crate::auth::handlers::ApiDoc::openapi(),
        crate::auth::captcha::ApiDoc::openapi(),
        crate::auth::password_handlers::ApiDoc::openapi(),
        crate::auth::two_factor_handlers::ApiDoc::openapi(),
        crate::auth::private_handlers::ApiDoc::openapi(),
        crate::auth::deletion::ApiDoc::openapi(),
        crate::auth::token_handlers::ApiDoc::openapi(),
        crate::auth::session_handlers::ApiDoc::openapi(),
        crate::auth::oidc_handlers::ApiDoc::openapi(),
        crate::tenancy::handlers::ApiDoc::openapi(),
        crate::tenancy::members::ApiDoc::openapi(),
        crate::tenancy::defaults::ApiDoc::openapi(),
        crate::chat::api::ApiDoc::openapi(),
        crate::chat::ws::ApiDoc::openapi(),
        crate::assistant::gateway::ApiDoc::openapi(),
        crate::assistant::chat_api::ApiDoc::openapi(),
        crate::assistant::guests::ApiDoc::openapi(),
        crate::billing::handlers::ApiDoc::openapi(),
        crate::edge::handlers::ApiDoc::openapi(),
        crate::admin::ApiDoc::openapi(),
        crate::devices::handlers::ApiDoc::openapi(),
        crate::devices::api::ApiDoc::openapi(),
        crate::auth::preferences::ApiDoc::openapi(),
        crate::web::client_errors::ApiDoc::openapi(),
    ] {
        doc.merge(part);
    }
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            add_common_errors(operation);
        }
    }
    doc
}

/// `GET /api/openapi.json`.
pub async fn serve() -> HttpResponse {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = DOCUMENT.get_or_init(|| document().to_json().unwrap_or_default());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json.clone())
}

#[derive(serde::Serialize)]
struct Parameter {
    name: String,
    location: String,
    required: bool,
    kind: String,
    description: String,
}

#[derive(serde::Serialize)]
struct Response {
    status: String,
    description: String,
    schema: String,
}

#[derive(serde::Serialize)]
struct Operation {
    /// An anchor: `post-api-v1-auth-login`.
    id: String,
    method: String,
    path: String,
    summary: String,
    description: String,
    parameters: Vec<Parameter>,
    body: String,
    responses: Vec<Response>,
}

#[derive(serde::Serialize)]
struct Tag {
    name: String,
    description: String,
    operations: Vec<Operation>,
}

#[derive(serde::Serialize)]
struct Field {
    name: String,
    kind: String,
    required: bool,
    description: String,
}

#[derive(serde::Serialize)]
struct Schema {
    name: String,
    description: String,
    fields: Vec<Field>,
}

/// A schema's type for people: `string`, `integer | null`, `Problem`, `array of Device`.
fn kind(schema: &serde_json::Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        return reference.rsplit('/').next().unwrap_or(reference).to_owned();
    }
    if let Some(options) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        return options.iter().map(kind).collect::<Vec<_>>().join(" | ");
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().map(kind).collect::<Vec<_>>().join(" & ");
    }
    match &schema["type"] {
        serde_json::Value::String(t) if t == "array" => {
            format!("array of {}", kind(&schema["items"]))
        }
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Array(types) => types
            .iter()
            .filter_map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        _ if schema.is_object() && schema.as_object().is_some_and(|o| o.is_empty()) => {
            "any".to_owned()
        }
        _ => "object".to_owned(),
    }
}

fn text(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A description's Markdown (`code`, links) as safe HTML: the chat's sanitising renderer.
fn prose(value: &serde_json::Value) -> String {
    match value.as_str() {
        Some(markdown) if !markdown.is_empty() => crate::chat::markdown::render(markdown),
        _ => String::new(),
    }
}

/// A response `add_common_errors` added (the page lists those once, at the top).
fn is_common_error(status: &str, response: &serde_json::Value) -> bool {
    COMMON_ERRORS
        .iter()
        .any(|(code, description, _)| *code == status && response["description"] == *description)
}

/// The document, arranged for the page: operations by tag, then the schemas.
fn arranged() -> (Vec<Tag>, Vec<Schema>, String, String) {
    let doc = serde_json::to_value(document()).unwrap_or_default();
    let mut tags: Vec<Tag> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| Tag {
            name: text(&t["name"]),
            description: text(&t["description"]),
            operations: Vec::new(),
        })
        .collect();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(op) = item.get(method) else {
                continue;
            };
            let parameters = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| Parameter {
                    name: text(&p["name"]),
                    location: text(&p["in"]),
                    required: p["required"].as_bool().unwrap_or(false),
                    kind: kind(&p["schema"]),
                    description: prose(&p["description"]),
                })
                .collect();
            let body = op["requestBody"]["content"]
                .as_object()
                .map(|content| {
                    content
                        .iter()
                        .map(|(media, c)| format!("{} ({media})", kind(&c["schema"])))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let responses = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(status, r)| !is_common_error(status, r))
                .map(|(status, r)| Response {
                    status: status.clone(),
                    description: prose(&r["description"]),
                    schema: r["content"]
                        .as_object()
                        .and_then(|c| c.values().next())
                        .map(|c| kind(&c["schema"]))
                        .unwrap_or_default(),
                })
                .collect();
            let operation = Operation {
                id: format!("{method}{}", path.replace(['/', '{', '}'], "-"))
                    .replace("--", "-")
                    .trim_end_matches('-')
                    .to_owned(),
                method: method.to_uppercase(),
                path: path.clone(),
                summary: text(&op["summary"]),
                description: prose(&op["description"]),
                parameters,
                body,
                responses,
            };
            let tag = op["tags"][0].as_str().unwrap_or("other").to_owned();
            match tags.iter_mut().find(|t| t.name == tag) {
                Some(found) => found.operations.push(operation),
                None => tags.push(Tag {
                    name: tag,
                    description: String::new(),
                    operations: vec![operation],
                }),
            }
        }
    }
    tags.retain(|t| !t.operations.is_empty());
    for tag in &mut tags {
        tag.operations.sort_by(|a, b| {
            (a.path.as_str(), a.method.as_str()).cmp(&(b.path.as_str(), b.method.as_str()))
        });
    }
    let schemas = doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, schema)| {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str())
                .collect();
            Schema {
                name: name.clone(),
                description: text(&schema["description"]),
                fields: schema["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(field, s)| Field {
                        name: field.clone(),
                        kind: kind(s),
                        required: required.contains(&field.as_str()),
                        description: prose(&s["description"]),
                    })
                    .collect(),
            }
        })
        .collect();
    (
        tags,
        schemas,
        prose(&doc["info"]["description"]),
        text(&doc["openapi"]),
    )
}

/// `GET /docs`: the API reference as a page.
pub async fn page(
    state: actix_web::web::Data<crate::web::AppState>,
    page: crate::web::pages::Page,
) -> Result<HttpResponse, crate::error::AppError> {
    let (tags, schemas, description, version) = arranged();
    let mut context = page.context(&state);
    context.insert("tags", &tags);
    context.insert("schemas", &schemas);
    context.insert("description", &description);
    context.insert("openapi_version", &version);
    let common: Vec<Response> = COMMON_ERRORS
        .iter()
        .map(|(status, description, _)| Response {
            status: (*status).to_owned(),
            description: crate::chat::markdown::render(description),
            schema: "Problem".to_owned(),
        })
        .collect();
    context.insert("common_errors", &common);
    context.insert(
        "operation_count",
        &tags.iter().map(|t| t.operations.len()).sum::<usize>(),
    );
    crate::web::pages::html(
        &state,
        "docs.html",
        &context,
        actix_web::http::StatusCode::OK,
    )
}
