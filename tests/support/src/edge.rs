//! Edge settings shared by the edge tests: the bridge serves `example.org` at
//! `sip.example.org`, and federation is open (default policy allow).

use std::sync::Arc;

use lcs_bridge::config::{DefaultPolicy, FederationConfig};
use lcs_bridge::edge::admission::ServedDomains;
use lcs_bridge::edge::core::CoreSettings;
use lcs_bridge::edge::dns::Discovery;
use lcs_bridge::edge::event::EdgeEvent;
use lcs_bridge::edge::server::{EdgeEvents, EdgeHandle, EdgeSettings, start};

pub fn core_settings() -> CoreSettings {
    CoreSettings {
        served: ServedDomains {
            local_domains: vec!["example.org".into()],
            public_fqdn: "sip.example.org".into(),
        },
        federation: FederationConfig {
            default_policy: DefaultPolicy::Allow,
            partners: vec![],
            discovered_rate: 20,
            verification_level: lcs_bridge::config::VerificationLevel::Verified,
        },
        public_fqdn: "sip.example.org".into(),
        pool: lcs_bridge::edge::pool::PoolLimits::default(),
        limits: lcs_bridge::edge::limits::EdgeLimits::default(),
    }
}

/// A resolver that reaches no server (the discard port): tests never use a real resolver.
pub fn no_dns() -> Arc<Discovery> {
    let discard = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    Arc::new(Discovery::new(&[discard]).expect("resolver set-up"))
}

/// Starts an edge with [`no_dns`] (and test logging); the test plays the layer above with the
/// events.
pub async fn start_edge(settings: EdgeSettings) -> (Arc<EdgeHandle>, EdgeEvents) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let (edge, events) = start(settings, no_dns()).await.expect("edge starts");
    (Arc::new(edge), events)
}

/// Starts an edge whose requests are all answered 501 (what `lcs-bridge run` does until the
/// engine is wired in).
pub async fn start_answering(settings: EdgeSettings) -> Arc<EdgeHandle> {
    let (edge, events) = start_edge(settings).await;
    tokio::spawn(answer_all(
        edge.clone(),
        events,
        501,
        "Not Implemented by this gateway yet",
    ));
    edge
}

/// A stand-in for the layer above: answers every request that reaches it with `status` and
/// `reason` (ACKs excepted), so nothing a peer sends goes unanswered.
pub async fn answer_all(
    edge: Arc<EdgeHandle>,
    mut events: EdgeEvents,
    status: u16,
    reason: &'static str,
) {
    let seed = u64::from(std::process::id());
    let mut n: u64 = 0;
    while let Some(event) = events.recv().await {
        if let EdgeEvent::Request { tx, request, .. } = event {
            if request.method() == Some(&lcs_bridge::sip::message::Method::Ack) {
                continue;
            }
            n += 1;
            let tag = format!("{seed:x}{n:x}");
            let resp = lcs_bridge::sip::message::Message::response_to(
                &request,
                status,
                Some(reason),
                Some(&tag),
            );
            edge.respond(tx, resp).await;
        }
    }
}
