//! The routes, their handlers, and the layers around them (body limit, CORS, tracing,
//! panic catching, JSON errors for everything axum answers by itself).

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use meshcore_net::ledger::TokensInfo;
use meshcore_net::routing::{Delivery, RelayStats, RouteError, RouteInfo, Routing};
use meshcore_net::webrtc::BrowserSendError;
use meshcore_net::{ConnectError, ConnectionInfo};
use meshcore_node::settings::SettingsPatch;
use meshcore_node::{Node, NodeInfo, NodeStats, SettingKey, Settings};
use meshcore_proto::bandwidth::AppId;
use meshcore_proto::NodeId;
use serde::Deserialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// A JSON body whose rejections become [`ApiError`]s.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(crate) struct ApiJson<T>(pub(crate) T);

/// A query string whose rejections become [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub(crate) T);

/// A path parameter whose rejections become [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub(crate) T);

pub(crate) fn router(node: Node) -> Router {
    let api = Router::new()
        .route("/node/info", get(node_info))
        .route("/stats", get(stats))
        .route("/settings", get(get_settings).put(put_settings))
        .route("/settings/{key}", delete(reset_setting))
        .route("/connect", post(connect))
        .route("/connections", get(connections))
        .route(
            "/dht/put",
            post(dht_put).layer(axum::extract::DefaultBodyLimit::max(
                crate::MAX_DHT_PUT_BODY_BYTES,
            )),
        )
        .route("/dht/get", get(dht_get))
        .route("/route/find", post(route_find))
        .route("/routes", get(routes))
        .route("/relay/stats", get(relay_stats))
        .route("/tokens", get(tokens))
        .route("/messages", post(send_message).get(messages))
        .route("/events", get(events))
        .route("/services", post(register_service))
        .route("/services/{name}", get(resolve_service))
        .route("/webrtc", get(crate::browser::webrtc_config))
        .route("/signal", get(crate::browser::signal))
        .route("/openapi.json", get(openapi))
        .with_state(node.clone());

    let mut router = Router::new()
        .route("/meshcore-p2p.js", get(crate::browser::client_js))
        .route("/meshcore-p2p.d.ts", get(crate::browser::client_types))
        .route("/demo", get(crate::browser::demo_page));
    for prefix in crate::PREFIXES {
        router = router.nest(prefix, api.clone());
    }
    router
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(crate::MAX_BODY_BYTES))
        .layer(cors(&node))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "a handler panicked",
            )
            .into_response()
        }))
}

/// CORS that follows the `cors_origins` setting as it changes at run time.
fn cors(node: &Node) -> CorsLayer {
    let settings = node.subscribe_settings();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            let allowed = &settings.borrow().cors_origins;
            allowed
                .iter()
                .any(|entry| entry == "*" || entry.as_bytes() == origin.as_bytes())
        }))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([CONTENT_TYPE])
}

/// Gives a JSON body to error responses that axum produced without one (405, 413 from
/// limits, …), so that every error a client sees has the same shape.
async fn json_errors(request: Request<Body>, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            format!(
                "the body is larger than the limit of {} bytes",
                crate::MAX_BODY_BYTES
            ),
        ),
        other => (
            "http_error",
            other.canonical_reason().unwrap_or("error").to_owned(),
        ),
    };
    let mut rebuilt = ApiError::new(status, code, message).into_response();
    for (name, value) in response.headers() {
        if name != CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route {method} {}; the routes are listed at /v1/openapi.json",
        uri.path()
    ))
}

/// Public facts about this node.
#[utoipa::path(get, path = "/v1/node/info", tag = "node",
    responses((status = 200, description = "This node", body = NodeInfo)))]
pub(crate) async fn node_info(State(node): State<Node>) -> Json<NodeInfo> {
    Json(node.info())
}

/// Counts describing this node.
#[utoipa::path(get, path = "/v1/stats", tag = "node",
    responses((status = 200, description = "Node statistics", body = NodeStats)))]
pub(crate) async fn stats(State(node): State<Node>) -> Result<Json<NodeStats>, ApiError> {
    Ok(Json(node.stats().await?))
}

/// The settings in force.
#[utoipa::path(get, path = "/v1/settings", tag = "settings",
    responses((status = 200, description = "Every setting with its value", body = Settings)))]
pub(crate) async fn get_settings(State(node): State<Node>) -> Json<Settings> {
    Json(node.settings())
}

/// Changes some settings at run time. The change is checked as a whole and stored, so it
/// outlives a restart and overrides the config file, environment and flags.
#[utoipa::path(put, path = "/v1/settings", tag = "settings",
    request_body(content = Object, description = "Setting names and new values, e.g. {\"max_hops\": 7}"),
    responses(
        (status = 200, description = "The settings now in force", body = Settings),
        (status = 400, description = "A rule was broken; nothing changed", body = crate::ErrorBody),
        (status = 413, description = "Body over the size limit", body = crate::ErrorBody),
    ))]
pub(crate) async fn put_settings(
    State(node): State<Node>,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> Result<Json<Settings>, ApiError> {
    Ok(Json(node.update_settings(&patch, "the API").await?))
}

/// Drops the runtime change of one setting, so the config file, environment, flags or
/// default apply again.
#[utoipa::path(delete, path = "/v1/settings/{key}", tag = "settings",
    params(("key" = String, Path, description = "A setting name")),
    responses(
        (status = 200, description = "The settings now in force", body = Settings),
        (status = 404, description = "No such setting", body = crate::ErrorBody),
    ))]
pub(crate) async fn reset_setting(
    State(node): State<Node>,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<Settings>, ApiError> {
    let key = SettingKey::from_name(&key)
        .ok_or_else(|| ApiError::not_found(format!("no setting named {key:?}")))?;
    Ok(Json(node.reset_setting(key, "the API").await?))
}

/// How long `POST /connect` waits for the link.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Body of `POST /connect`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConnectRequest {
    /// The node to link to (64 hex characters).
    peer_id: String,
    /// How to reach it. Optional when the node already knows its addresses.
    #[serde(default)]
    peer_info: PeerInfo,
}

/// Where a peer can be reached: a node's addresses, or a browser's WebRTC offer.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PeerInfo {
    /// Addresses as `HOST:PORT` (IP literals), for a node.
    #[serde(default)]
    addrs: Vec<String>,
    /// A browser's SDP offer (then `peer_id` is the browser's id and the answer is returned).
    #[serde(default)]
    sdp: Option<String>,
    /// With `sdp`: the browser's signature binding the offer's DTLS fingerprint to `peer_id`
    /// (hex; see web/PROTOCOL.md).
    #[serde(default)]
    signature: Option<String>,
}

/// Answer of `POST /connect`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ConnectResponse {
    /// Always true: failures are errors.
    connected: bool,
    /// The link.
    connection: ConnectionInfo,
}

/// Links to a peer (the specification's connect call) and waits until the link is up. With
/// `peer_info.sdp`, the peer is a browser offering a WebRTC data channel: the node answers
/// with its SDP, and the channel opens afterwards.
#[utoipa::path(post, path = "/v1/connect", tag = "links",
    request_body = ConnectRequest,
    responses(
        (status = 200, description = "Linked (or already linked); for a browser's offer, the signed answer", body = ConnectResponse),
        (status = 400, description = "Bad peer id, address, SDP or signature, or this node itself", body = crate::ErrorBody),
        (status = 403, description = "The peer is blacklisted or not in allowed_peers", body = crate::ErrorBody),
        (status = 502, description = "The dial or handshake failed", body = crate::ErrorBody),
        (status = 503, description = "At max_connections, or shutting down", body = crate::ErrorBody),
        (status = 504, description = "No link in time", body = crate::ErrorBody),
    ))]
pub(crate) async fn connect(
    State(node): State<Node>,
    ApiJson(request): ApiJson<ConnectRequest>,
) -> Result<Response, ApiError> {
    let peer: NodeId = request.peer_id.parse().map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_peer_id",
            format!("peer_id: {error}"),
        )
    })?;
    if let Some(sdp) = &request.peer_info.sdp {
        let answer =
            crate::browser::answer_offer(&node, peer, sdp, request.peer_info.signature.as_deref())
                .await?;
        return Ok(answer.into_response());
    }
    if request.peer_info.addrs.len() > meshcore_proto::link::MAX_ADDRS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_address",
            format!(
                "peer_info.addrs: at most {} addresses",
                meshcore_proto::link::MAX_ADDRS
            ),
        ));
    }
    let mut addrs = Vec::new();
    for text in &request.peer_info.addrs {
        let addr: std::net::SocketAddr = text.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_address",
                format!("peer_info.addrs: {text:?} is not IP:PORT"),
            )
        })?;
        addrs.push(addr);
    }
    let connection = node
        .network()
        .connect(peer, addrs, CONNECT_TIMEOUT)
        .await
        .map_err(|error| {
            let (status, code) = match &error {
                ConnectError::SelfLink | ConnectError::NoAddress => {
                    (StatusCode::BAD_REQUEST, "invalid_peer")
                }
                ConnectError::Blacklisted => (StatusCode::FORBIDDEN, "blacklisted"),
                ConnectError::NotAllowed => (StatusCode::FORBIDDEN, "not_allowed"),
                ConnectError::Full => (StatusCode::SERVICE_UNAVAILABLE, "full"),
                ConnectError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
                ConnectError::DialFailed(_) => (StatusCode::BAD_GATEWAY, "dial_failed"),
                ConnectError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            };
            ApiError::new(status, code, error.to_string())
        })?;
    Ok(Json(ConnectResponse {
        connected: true,
        connection,
    })
    .into_response())
}

/// The live links, with the specification's columns.
#[utoipa::path(get, path = "/v1/connections", tag = "links",
    responses((status = 200, description = "Every live link", body = Vec<ConnectionInfo>)))]
pub(crate) async fn connections(State(node): State<Node>) -> Json<Vec<ConnectionInfo>> {
    Json(node.network().connections().await)
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API")))]
pub(crate) async fn openapi() -> Response {
    match serde_json::to_vec(crate::openapi::openapi_document()) {
        Ok(bytes) => ([(CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(error) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
        .into_response(),
    }
}

/// Body of `POST /dht/put` (the specification's call).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DhtPutRequest {
    /// A name: the record is stored under `NODE_ID/NAME`, signed by this node, and only this
    /// node can replace it. Without a name the record is content-addressed (its key is the
    /// SHA-256 of the value).
    #[serde(default)]
    key: Option<String>,
    /// Any JSON value; at most 65536 bytes as JSON text.
    value: serde_json::Value,
    /// Lifetime in seconds, 1 to 172800; default 3600.
    #[serde(default)]
    ttl: Option<i64>,
}

/// Stores a value in the DHT, here and on the nodes closest to its key.
#[utoipa::path(post, path = "/v1/dht/put", tag = "dht",
    request_body = DhtPutRequest,
    responses(
        (status = 200, description = "Stored; `key` is where others get it", body = meshcore_node::records::PutOutcome),
        (status = 400, description = "Bad name, TTL or oversized value", body = crate::ErrorBody),
        (status = 503, description = "The DHT could not complete the request", body = crate::ErrorBody),
    ))]
pub(crate) async fn dht_put(
    State(node): State<Node>,
    ApiJson(request): ApiJson<DhtPutRequest>,
) -> Result<Json<meshcore_node::records::PutOutcome>, ApiError> {
    let outcome = meshcore_node::records::put(
        node.network().dht(),
        request.key.as_deref(),
        &request.value,
        request.ttl,
    )
    .await?;
    Ok(Json(outcome))
}

/// Query of `GET /dht/get`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DhtGetQuery {
    /// `NODE_ID/NAME` or a 64-hex content key.
    key: String,
}

/// Finds a value in the DHT.
#[utoipa::path(get, path = "/v1/dht/get", tag = "dht",
    params(DhtGetQuery),
    responses(
        (status = 200, description = "The record", body = meshcore_node::records::GetOutcome),
        (status = 400, description = "A malformed key", body = crate::ErrorBody),
        (status = 404, description = "No node holds it", body = crate::ErrorBody),
        (status = 503, description = "The DHT could not complete the request", body = crate::ErrorBody),
    ))]
pub(crate) async fn dht_get(
    State(node): State<Node>,
    ApiQuery(query): ApiQuery<DhtGetQuery>,
) -> Result<Json<meshcore_node::records::GetOutcome>, ApiError> {
    Ok(Json(
        meshcore_node::records::get(node.network().dht(), &query.key).await?,
    ))
}

/// Body of `POST /services`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceRequest {
    /// The service name (1 to 60 bytes, no '/').
    name: String,
    /// The port the service listens on.
    #[serde(default)]
    port: Option<u16>,
    /// Anything else clients need (JSON).
    #[serde(default)]
    info: Option<serde_json::Value>,
    /// Seconds the entry lives unless registered again, 1 to 172800; default 3600.
    #[serde(default)]
    ttl: Option<i64>,
}

/// Registers this node as a provider of a named service (mesh DNS). The entry is signed by
/// this node and expires unless registered again.
#[utoipa::path(post, path = "/v1/services", tag = "dht",
    request_body = ServiceRequest,
    responses(
        (status = 200, description = "Registered", body = meshcore_node::records::ServiceRegistered),
        (status = 400, description = "Bad name, port, info or TTL", body = crate::ErrorBody),
        (status = 503, description = "The DHT could not complete the request", body = crate::ErrorBody),
    ))]
pub(crate) async fn register_service(
    State(node): State<Node>,
    ApiJson(request): ApiJson<ServiceRequest>,
) -> Result<Json<meshcore_node::records::ServiceRegistered>, ApiError> {
    let offer = meshcore_node::records::ServiceOffer {
        port: request.port,
        info: request.info,
    };
    Ok(Json(
        meshcore_node::records::register_service(
            node.network().dht(),
            &request.name,
            &offer,
            request.ttl,
        )
        .await?,
    ))
}

/// The providers of a named service.
#[utoipa::path(get, path = "/v1/services/{name}", tag = "dht",
    params(("name" = String, Path, description = "The service name")),
    responses(
        (status = 200, description = "Its live providers", body = Vec<meshcore_node::records::ServiceProvider>),
        (status = 400, description = "A malformed name", body = crate::ErrorBody),
        (status = 404, description = "No live provider", body = crate::ErrorBody),
    ))]
pub(crate) async fn resolve_service(
    State(node): State<Node>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<meshcore_node::records::ServiceProvider>>, ApiError> {
    Ok(Json(
        meshcore_node::records::resolve_service(node.network().dht(), &name).await?,
    ))
}

/// Longest `POST /route/find` waits for a discovery.
const ROUTE_FIND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Longest `POST /messages` waits for a route and the acknowledgement together.
const MESSAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn routing_of(node: &Node) -> Result<&Routing, ApiError> {
    node.routing().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "routing_off",
            "this node runs without the routing driver",
        )
    })
}

fn destination_of(text: &str) -> Result<NodeId, ApiError> {
    text.parse().map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_destination",
            format!("destination: {error}"),
        )
    })
}

impl From<RouteError> for ApiError {
    fn from(error: RouteError) -> Self {
        let (status, code) = match &error {
            RouteError::ToSelf => (StatusCode::BAD_REQUEST, "invalid_destination"),
            RouteError::PayloadTooLarge { .. } => (StatusCode::BAD_REQUEST, "invalid_payload"),
            RouteError::NoRouteWithinMaxHops | RouteError::Unreachable(_) => {
                (StatusCode::NOT_FOUND, "no_route")
            }
            RouteError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            RouteError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            RouteError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            RouteError::Encryption(_) => (StatusCode::BAD_REQUEST, "encryption_failed"),
            RouteError::Throttled(throttled) => {
                let seconds = throttled.retry_after.as_millis().div_ceil(1000).max(1);
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "throttled",
                    error.to_string(),
                )
                .with_retry_after(u64::try_from(seconds).unwrap_or(u64::MAX));
            }
        };
        ApiError::new(status, code, error.to_string())
    }
}

/// Body of `POST /route/find`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFindRequest {
    /// The node id to find a route to.
    destination: String,
}

/// Finds a route to a node: the known one, or the result of a discovery (RREQ flood with
/// an expanding ring up to `max_hops`).
#[utoipa::path(post, path = "/v1/route/find", tag = "routing",
    request_body = RouteFindRequest,
    responses(
        (status = 200, description = "The selected route", body = RouteInfo),
        (status = 400, description = "A malformed node id, or this node itself", body = crate::ErrorBody),
        (status = 404, description = "No route within max_hops", body = crate::ErrorBody),
        (status = 503, description = "Routing is busy or stopping", body = crate::ErrorBody),
        (status = 504, description = "No answer in time", body = crate::ErrorBody),
    ))]
pub(crate) async fn route_find(
    State(node): State<Node>,
    ApiJson(request): ApiJson<RouteFindRequest>,
) -> Result<Json<RouteInfo>, ApiError> {
    let destination = destination_of(&request.destination)?;
    let route = routing_of(&node)?
        .find_route(destination, ROUTE_FIND_TIMEOUT)
        .await?;
    Ok(Json(route))
}

/// Every route this node has selected.
#[utoipa::path(get, path = "/v1/routes", tag = "routing",
    responses(
        (status = 200, description = "The route table", body = Vec<RouteInfo>),
        (status = 503, description = "Routing is stopping", body = crate::ErrorBody),
    ))]
pub(crate) async fn routes(State(node): State<Node>) -> Result<Json<Vec<RouteInfo>>, ApiError> {
    Ok(Json(routing_of(&node)?.routes().await?))
}

/// The relay: whether this node relays, its budget (`relay_bandwidth`) and how it is shared
/// now, what it forwarded, refused and dropped (by reason), and its flows.
#[utoipa::path(get, path = "/v1/relay/stats", tag = "relay",
    responses(
        (status = 200, description = "The relay's state and counters", body = RelayStats),
        (status = 503, description = "Routing is off or stopping", body = crate::ErrorBody),
    ))]
pub(crate) async fn relay_stats(State(node): State<Node>) -> Result<Json<RelayStats>, ApiError> {
    Ok(Json(routing_of(&node)?.relay_stats().await?))
}

/// The node's tokens: balance, earned and spent, and per neighbour the credit (owed to this
/// node), the debt (owed by it) and the latest signed IOUs each way. Amounts are
/// milli-tokens (1 token = 1000).
#[utoipa::path(get, path = "/v1/tokens", tag = "relay",
    responses(
        (status = 200, description = "The ledger", body = TokensInfo),
        (status = 503, description = "Routing is off or stopping", body = crate::ErrorBody),
    ))]
pub(crate) async fn tokens(State(node): State<Node>) -> Result<Json<TokensInfo>, ApiError> {
    Ok(Json(routing_of(&node)?.tokens().await?))
}

/// Body of `POST /messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageRequest {
    /// The id to send to: a node, or a browser (connected to this node or to another).
    destination: String,
    /// The message text (at most 61440 bytes; about 150 fewer to a browser on another node). It is end-to-end encrypted: relays see only
    /// the routing header.
    payload: String,
    /// The sending application's name (1 to 64 letters, digits, `.`, `_`, `-`, `:`), to
    /// which `app_bandwidth` applies; default `api`.
    #[serde(default)]
    app: Option<String>,
}

/// Sends a message over the mesh and waits for the destination's acknowledgement. The
/// payload is end-to-end encrypted and authenticated (X25519, HKDF-SHA256, AES-256-GCM);
/// relays see only the routing header. A browser on another node is found in the DHT; the
/// message is sealed for its node, which hands it over on the browser's data channel, and
/// is delivered once the browser acknowledged it.
#[utoipa::path(post, path = "/v1/messages", tag = "routing",
    request_body = MessageRequest,
    responses(
        (status = 200, description = "Delivered and acknowledged", body = Delivery),
        (status = 400, description = "A malformed node id, this node itself, a payload too large, or a bad app name", body = crate::ErrorBody),
        (status = 404, description = "No route within max_hops, or the destination (or a browser's node) could not deliver it", body = crate::ErrorBody),
        (status = 429, description = "Over peer_bandwidth or app_bandwidth for longer than a send waits (2 s); Retry-After says when to retry", body = crate::ErrorBody),
        (status = 503, description = "Routing is busy or stopping", body = crate::ErrorBody),
        (status = 504, description = "No acknowledgement in time", body = crate::ErrorBody),
    ))]
pub(crate) async fn send_message(
    State(node): State<Node>,
    ApiJson(request): ApiJson<MessageRequest>,
) -> Result<Json<Delivery>, ApiError> {
    let destination = destination_of(&request.destination)?;
    let app = match request.app.as_deref() {
        None => AppId::default_app(),
        Some(name) => AppId::new(name).map_err(|error| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_app",
                format!("app: {error}"),
            )
        })?,
    };
    let payload = bytes::Bytes::from(request.payload.into_bytes());
    if let Some(webrtc) = node.network().webrtc() {
        match webrtc
            .send_app(destination, payload.clone(), MESSAGE_TIMEOUT)
            .await
        {
            Ok(rtt) => {
                return Ok(Json(Delivery {
                    delivered: true,
                    hops: 1,
                    rtt_ms: rtt.as_secs_f64() * 1000.0,
                }))
            }
            Err(BrowserSendError::NotConnected(_)) => {}
            Err(error) => {
                let (status, code) = match &error {
                    BrowserSendError::TooLarge { .. } => {
                        (StatusCode::BAD_REQUEST, "invalid_payload")
                    }
                    BrowserSendError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, "browser_unavailable"),
                };
                return Err(ApiError::new(status, code, error.to_string()));
            }
        }
    }
    let routing = routing_of(&node)?;
    // A browser on another node is reached through it (found in the DHT).
    let delivery = match node.network().webrtc().and_then(|webrtc| webrtc.messages()) {
        Some(messages) => {
            messages
                .send_from_node(&app, destination, payload, MESSAGE_TIMEOUT)
                .await?
        }
        None => {
            routing
                .send_as(&app, destination, payload, MESSAGE_TIMEOUT)
                .await?
        }
    };
    Ok(Json(delivery))
}

/// A message delivered to this node, as `GET /messages` shows it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ReceivedMessageView {
    /// The sender's id: a node, or a browser.
    source: String,
    /// For a browser `source` on another node: the node that carried the message for it
    /// (the browser signed it, so that node could not have forged it).
    #[serde(skip_serializing_if = "Option::is_none")]
    via: Option<String>,
    /// The message text (bytes that are not UTF-8 show as U+FFFD).
    payload: String,
    /// Links it crossed.
    hops: u8,
    /// Unix milliseconds when it arrived.
    received_at: u64,
}

/// The last 256 messages delivered to this node, oldest first.
#[utoipa::path(get, path = "/v1/messages", tag = "routing",
    responses(
        (status = 200, description = "Recent messages", body = Vec<ReceivedMessageView>),
        (status = 503, description = "Routing is stopping", body = crate::ErrorBody),
    ))]
pub(crate) async fn messages(
    State(node): State<Node>,
) -> Result<Json<Vec<ReceivedMessageView>>, ApiError> {
    let received = routing_of(&node)?.received().await?;
    Ok(Json(
        received
            .into_iter()
            .map(|message| ReceivedMessageView {
                source: message.source.to_hex(),
                via: message.via.map(|via| via.to_hex()),
                payload: String::from_utf8_lossy(&message.payload).into_owned(),
                hops: message.hops,
                received_at: message.received_at,
            })
            .collect(),
    ))
}

/// Streams mesh events over a WebSocket: one JSON text message per event, tagged by `type`
/// (`message`, `link_up`, `link_down`, `route_found`, `route_repaired`, `route_lost`, and
/// `lagged` when this subscriber fell behind). Messages the client sends are ignored.
#[utoipa::path(get, path = "/v1/events", tag = "routing",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; then a stream of MeshEvent JSON texts", body = meshcore_net::routing::MeshEvent),
        (status = 400, description = "Not a WebSocket upgrade request", body = crate::ErrorBody),
        (status = 503, description = "Routing is off", body = crate::ErrorBody),
    ))]
pub(crate) async fn events(
    State(node): State<Node>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            format!("GET /v1/events is a WebSocket: {}", rejection.body_text()),
        )
    })?;
    let mut events = routing_of(&node)?.events();
    Ok(upgrade.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        loop {
            tokio::select! {
                event = events.recv() => {
                    let event = match event {
                        Ok(event) => event,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            meshcore_net::routing::MeshEvent::Lagged { missed }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    };
                    let Ok(text) = serde_json::to_string(&event) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    }))
}
