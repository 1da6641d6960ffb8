//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations.

use std::sync::OnceLock;

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meshcore node API",
        description = "REST API of a Meshcore node. Every path below is also served under \
                       /wp-json/aevov-meshcore/v1/ in place of /v1/, for clients written against \
                       the Aevov Meshcore specification. Errors are JSON {\"error\", \"message\"}."
    ),
    paths(
        crate::routes::node_info,
        crate::routes::stats,
        crate::routes::get_settings,
        crate::routes::put_settings,
        crate::routes::reset_setting,
        crate::routes::connect,
        crate::routes::connections,
        crate::routes::dht_put,
        crate::routes::dht_get,
        crate::routes::route_find,
        crate::routes::routes,
        crate::routes::relay_stats,
        crate::routes::tokens,
        crate::routes::send_message,
        crate::routes::messages,
        crate::routes::register_service,
        crate::routes::resolve_service,
        crate::routes::events,
        crate::browser::webrtc_config,
        crate::browser::signal,
        crate::routes::openapi,
    ),
    components(schemas(
        meshcore_net::routing::MeshEvent,
        meshcore_node::NodeInfo,
        meshcore_node::NodeStats,
        meshcore_node::Settings,
        meshcore_node::settings::TurnServer,
        meshcore_node::FieldError,
        crate::ErrorBody,
        meshcore_net::ConnectionInfo,
        crate::routes::ConnectRequest,
        crate::routes::PeerInfo,
        crate::routes::ConnectResponse,
        crate::routes::DhtPutRequest,
        meshcore_node::records::PutOutcome,
        meshcore_node::records::GetOutcome,
        crate::routes::RouteFindRequest,
        meshcore_net::routing::RouteInfo,
        crate::routes::MessageRequest,
        meshcore_net::routing::Delivery,
        meshcore_net::routing::RelayStats,
        meshcore_net::routing::RelayFlowInfo,
        meshcore_net::routing::SendLimitsInfo,
        meshcore_net::ledger::TokensInfo,
        meshcore_net::ledger::NeighbourAccount,
        meshcore_net::ledger::IouInfo,
        crate::routes::ReceivedMessageView,
        crate::routes::ServiceRequest,
        meshcore_node::records::ServiceRegistered,
        meshcore_node::records::ServiceProvider,
        crate::browser::WebRtcConfig,
        crate::browser::OfferAnswer,
    ))
)]
struct ApiDoc;

/// The OpenAPI document of the API, built once.
pub fn openapi_document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(ApiDoc::openapi)
}

#[cfg(test)]
mod tests {
    use super::openapi_document;

    /// Every `$ref` in `value`.
    fn refs(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map {
                    match (key.as_str(), inner.as_str()) {
                        ("$ref", Some(target)) => found.push(target.to_owned()),
                        _ => refs(inner, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_reference_resolves() {
        let document = serde_json::to_value(openapi_document()).expect("serialisable");
        let mut found = Vec::new();
        refs(&document, &mut found);
        assert!(!found.is_empty());
        for target in found {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("an unexpected reference {target}"));
            assert!(
                document["components"]["schemas"].get(name).is_some(),
                "{target} is referenced but not in the document"
            );
        }
        let stats = &document["components"]["schemas"]["NodeStats"]["properties"];
        assert!(stats.get("data_lane").is_some(), "{stats}");
    }

    #[test]
    fn a_route_shows_its_price() {
        let document = serde_json::to_value(openapi_document()).expect("serialisable");
        let route = &document["components"]["schemas"]["RouteInfo"];
        assert_eq!(
            route["properties"]["path_price"]["type"], "integer",
            "{route}"
        );
        let required = route["required"].as_array().expect("required fields");
        assert!(required.iter().any(|field| field == "path_price"));
    }
}
