//! Edge settings shared by the edge tests: the bridge serves `example.org` at
//! `sip.example.org`, and federation is open (default policy allow).

use lcs_bridge::config::{DefaultPolicy, FederationConfig};
use lcs_bridge::edge::core::CoreSettings;
use lcs_bridge::policy::ServedDomains;

pub fn core_settings() -> CoreSettings {
    CoreSettings {
        served: ServedDomains {
            local_domains: vec!["example.org".into()],
            public_fqdn: "sip.example.org".into(),
        },
        federation: FederationConfig {
            default_policy: DefaultPolicy::Allow,
            partners: vec![],
            discovered_rate: lcs_bridge::edge::core::DEFAULT_DISCOVERED_RATE,
            verification_level: lcs_bridge::config::VerificationLevel::Verified,
        },
        public_fqdn: "sip.example.org".into(),
        discovered_rate: lcs_bridge::edge::core::DEFAULT_DISCOVERED_RATE,
    }
}
