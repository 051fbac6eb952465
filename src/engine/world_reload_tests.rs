//! A reload's new settings and tables ([`super::bridge::Input::Reconfigure`]) on the virtual
//! clock: what each engine does with the state it has already built (docs/configuration.md
//! "Reloading").
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::world::{World, contact_jid, pidf};
use crate::core::tables::Mappings;
use crate::sip::message::Method;

const ALICE: &str = "alice@example.org";
const BOB_AOR: &str = "sip:bob@contoso.com";
const ALICE_URI: &str = "sip:alice@example.org";
const CAROL_AOR: &str = "sip:carol@contoso.com";

fn body_of(m: &crate::sip::message::Message) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

/// The built-in tables with one edit of presence.toml's text.
fn tables_with(from: &str, to: &str) -> Mappings {
    let presence = include_str!("../../mappings/presence.toml");
    assert!(presence.contains(from), "presence.toml has {from}");
    let errors = include_str!("../../mappings/errors.toml");
    Mappings::from_strs(&presence.replace(from, to), errors).unwrap()
}

/// A new presence table translates the next document LCS sends; what was sent before stays.
#[test]
fn a_reloaded_presence_table_translates_the_next_notify_from_lcs() {
    let mut w = World::new();
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf(BOB_AOR, "away"));
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{}' type='subscribe'/>",
        contact_jid("bob")
    ));
    w.settle();
    w.lcs_notifies(BOB_AOR, "busy");
    w.settle();
    assert!(
        w.xmpp
            .to(ALICE)
            .last()
            .unwrap()
            .contains("<show>dnd</show>")
    );
    w.lcs_notifies(BOB_AOR, "away");
    w.settle();

    // Busy shown as extended away from now on.
    w.reload(
        |_| {},
        |_| {},
        tables_with(
            r#"busy = { show = "dnd", status = "Busy" }"#,
            r#"busy = { show = "xa", status = "Busy" }"#,
        ),
    );
    w.lcs_notifies(BOB_AOR, "busy");
    w.settle();
    let last = w.xmpp.to(ALICE).last().unwrap().clone();
    assert!(last.contains("<show>xa</show>"), "{last}");
    assert_eq!(w.lcs.statuses(Method::Notify), [200, 200, 200, 200]);
}

/// A shorter `min_notify_interval` counts from each watcher's last NOTIFY: NOTIFYs owed under
/// the old interval go out by the new one (every watcher's, not only the next timer's), not
/// when the old one would have let them.
#[test]
fn a_shorter_notify_interval_sends_the_owed_notifies_sooner() {
    let mut w = World::with_presence(|p| p.min_notify_interval = Duration::from_secs(60));
    for aor in [BOB_AOR, CAROL_AOR] {
        w.lcs_subscribes(aor, ALICE_URI);
        w.settle();
        let user = aor.trim_start_matches("sip:").split('@').next().unwrap();
        w.xmpp_sends(&format!(
            "<presence from='{ALICE}' to='{}' type='subscribed'/>",
            contact_jid(user)
        ));
    }
    w.xmpp_broadcast(&format!("{ALICE}/pc"), Some("<show>away</show>"));
    w.run_for(Duration::from_secs(120));
    // Extended away goes out at once (the last NOTIFYs are long ago); busy right after is
    // owed for the rest of the minute.
    w.xmpp_broadcast(&format!("{ALICE}/pc"), Some("<show>xa</show>"));
    w.run_for(Duration::from_secs(1));
    let sent = w.lcs.requests(&Method::Notify).len();
    w.xmpp_broadcast(&format!("{ALICE}/pc"), Some("<show>dnd</show>"));
    w.run_for(Duration::from_secs(2));
    assert_eq!(
        w.lcs.requests(&Method::Notify).len(),
        sent,
        "owed, not sent"
    );

    w.reload(
        |p| p.min_notify_interval = Duration::from_secs(5),
        |_| {},
        Mappings::builtin(),
    );
    w.run_for(Duration::from_secs(3));
    let notifies = w.lcs.requests(&Method::Notify);
    assert_eq!(
        notifies.len(),
        sent + 2,
        "both sent 5 s after their last one"
    );
    for n in &notifies[sent..] {
        assert!(body_of(n).contains("busy"), "{}", body_of(n));
    }
}

/// A shorter idle timeout counts from each open session's last message; the engines keep the
/// `public_fqdn` they started with (a restart changes it).
#[test]
fn a_shorter_idle_timeout_ends_open_sessions_from_their_last_message() {
    let mut w = World::new();
    let bob = contact_jid("bob");
    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m1'><body>hello</body></message>"
    ));
    w.settle();
    assert_eq!(w.lcs.requests(&Method::Invite).len(), 1);
    w.run_for(Duration::from_secs(100));

    w.reload(
        |p| p.public_fqdn = "elsewhere.example.org".into(),
        |im| {
            im.idle_timeout = Duration::from_secs(120);
            im.public_fqdn = "elsewhere.example.org".into();
        },
        Mappings::builtin(),
    );
    w.run_for(Duration::from_secs(19));
    assert!(
        w.lcs.requests(&Method::Bye).is_empty(),
        "not idle for 120 s yet"
    );
    w.run_for(Duration::from_secs(2));
    assert_eq!(w.lcs.requests(&Method::Bye).len(), 1, "idle for 120 s");

    w.xmpp_sends(&format!(
        "<message from='{ALICE}/pc' to='{bob}' type='chat' id='m2'><body>again</body></message>"
    ));
    w.settle();
    let invites = w.lcs.requests(&Method::Invite);
    assert_eq!(invites.len(), 2);
    let via = invites[1].header("Via").unwrap();
    assert!(via.contains(super::world::PUBLIC_FQDN), "{via}");
}
