//! The administration commands (XEP-0050 on the component, [`super::admin`]) through the whole
//! bridge on the virtual clock: who may see and run them, the form steps, the errors, and what
//! the runner's executor is given.
#![allow(clippy::unwrap_used)]

use super::admin::Command;
use super::world::{ADMIN, COMPONENT, World, contact_jid, pidf};
use crate::core::tables::Mappings;

const NS: &str = "http://jabber.org/protocol/commands";
const ALICE: &str = "alice@example.org";
const BOB_AOR: &str = "sip:bob@contoso.com";

fn items(w: &mut World, from: &str) -> String {
    w.xmpp_sends(&format!(
        "<iq from='{from}/pc' to='{COMPONENT}' type='get' id='d1'><query xmlns='http://jabber.org/protocol/disco#items' node='{NS}'/></iq>"
    ));
    w.settle();
    w.xmpp.to(from).last().unwrap().clone()
}

fn execute(w: &mut World, from: &str, id: &str, node: &str, inner: &str) -> String {
    w.xmpp_sends(&format!(
        "<iq from='{from}/pc' to='{COMPONENT}' type='set' id='{id}'><command xmlns='{NS}' node='{node}' action='execute'>{inner}</command></iq>"
    ));
    w.settle();
    w.xmpp.to(from).last().unwrap().clone()
}

fn form(fields: &[(&str, &str)]) -> String {
    let fields: String = fields
        .iter()
        .map(|(var, value)| format!("<field var='{var}'><value>{value}</value></field>"))
        .collect();
    format!("<x xmlns='jabber:x:data' type='submit'>{fields}</x>")
}

fn session_of(reply: &str) -> String {
    let at = reply.find("sessionid='").unwrap() + "sessionid='".len();
    reply[at..].split('\'').next().unwrap().to_owned()
}

#[test]
fn only_administrators_see_and_run_the_commands() {
    let mut w = World::new();
    let listed = items(&mut w, ALICE);
    assert!(
        listed.contains("type='result'") && !listed.contains("<item"),
        "{listed}"
    );
    let refused = execute(&mut w, ALICE, "c1", "partners", "");
    assert!(
        refused.contains("type='error'") && refused.contains("<forbidden"),
        "{refused}"
    );
    assert!(w.admin_commands.is_empty());

    let listed = items(&mut w, ADMIN);
    for node in [
        "partners",
        "subscriptions",
        "block",
        "unblock",
        "end-subscription",
        "reload",
    ] {
        assert!(
            listed.contains(&format!("node='{node}'")),
            "{node}: {listed}"
        );
    }
    let done = execute(&mut w, ADMIN, "c2", "partners", "");
    assert!(done.contains("status='completed'"), "{done}");
    assert!(done.contains("id='c2'"), "{done}");
    assert!(done.contains("partner contoso.com: allow"), "{done}");
    assert_eq!(w.admin_commands, [Command::Partners]);

    // A reload that drops the administrator: refused from then on.
    w.reload(|_| {}, |_| {}, Mappings::builtin());
    assert!(execute(&mut w, ADMIN, "c3", "reload", "").contains("status='completed'"));
    let mut w2 = World::new();
    w2.reload_admins(Vec::new());
    let refused = execute(&mut w2, ADMIN, "c4", "partners", "");
    assert!(refused.contains("<forbidden"), "{refused}");
}

/// A command with a field: the form first (a session), then the submitted form; the runner
/// is given the command, the requester the outcome.
#[test]
fn block_asks_for_the_domain_then_says_it_is_runtime_only() {
    let mut w = World::new();
    let asked = execute(&mut w, ADMIN, "b1", "block", "");
    assert!(asked.contains("status='executing'"), "{asked}");
    assert!(
        asked.contains("var='domain'") && asked.contains("type='form'"),
        "{asked}"
    );
    let sid = session_of(&asked);
    assert!(w.admin_commands.is_empty());

    // Another requester cannot go on with that session; a bad value is refused.
    w.xmpp_sends(&format!(
        "<iq from='{ADMIN}/other' to='{COMPONENT}' type='set' id='b2'><command xmlns='{NS}' node='block' sessionid='{sid}' action='complete'>{}</command></iq>",
        form(&[("domain", "contoso.com")])
    ));
    w.settle();
    let stolen = w.xmpp.to(ADMIN).last().unwrap().clone();
    assert!(stolen.contains("<bad-sessionid"), "{stolen}");
    let bad = execute(
        &mut w,
        ADMIN,
        "b3",
        "block",
        &form(&[("domain", "not a domain")]),
    );
    assert!(
        bad.contains("<bad-request") && bad.contains("<bad-payload"),
        "{bad}"
    );
    assert!(w.admin_commands.is_empty());

    w.xmpp_sends(&format!(
        "<iq from='{ADMIN}/pc' to='{COMPONENT}' type='set' id='b4'><command xmlns='{NS}' node='block' sessionid='{sid}' action='complete'>{}</command></iq>",
        form(&[("domain", "Contoso.COM")])
    ));
    w.settle();
    let done = w.xmpp.to(ADMIN).last().unwrap().clone();
    assert!(
        done.contains("status='completed'") && done.contains("id='b4'"),
        "{done}"
    );
    assert!(done.contains("contoso.com blocked"), "{done}");
    assert!(
        done.contains("runtime only: add [[federation.partners]]"),
        "{done}"
    );
    assert_eq!(
        w.admin_commands,
        [Command::Block {
            domain: "contoso.com".into()
        }]
    );
    // The session is over.
    w.xmpp_sends(&format!(
        "<iq from='{ADMIN}/pc' to='{COMPONENT}' type='set' id='b5'><command xmlns='{NS}' node='block' sessionid='{sid}' action='complete'>{}</command></iq>",
        form(&[("domain", "contoso.com")])
    ));
    w.settle();
    assert!(w.xmpp.to(ADMIN).last().unwrap().contains("<bad-sessionid"));

    // Cancel ends a session; an unknown node is item-not-found.
    let asked = execute(&mut w, ADMIN, "b6", "unblock", "");
    let sid = session_of(&asked);
    w.xmpp_sends(&format!(
        "<iq from='{ADMIN}/pc' to='{COMPONENT}' type='set' id='b7'><command xmlns='{NS}' node='unblock' sessionid='{sid}' action='cancel'/></iq>"
    ));
    w.settle();
    assert!(
        w.xmpp
            .to(ADMIN)
            .last()
            .unwrap()
            .contains("status='canceled'")
    );
    let unknown = execute(&mut w, ADMIN, "b8", "shutdown", "");
    assert!(unknown.contains("<item-not-found"), "{unknown}");
}

/// `subscriptions` with the form in the first request: the user's stored subscriptions.
#[test]
fn subscriptions_lists_what_the_store_holds_for_the_user() {
    let mut w = World::new();
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf(BOB_AOR, "away"));
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{}' type='subscribe'/>",
        contact_jid("bob")
    ));
    w.settle();
    let done = execute(
        &mut w,
        ADMIN,
        "s1",
        "subscriptions",
        &form(&[("user", ALICE)]),
    );
    assert!(done.contains("status='completed'"), "{done}");
    assert!(
        done.contains("watches 1 LCS user(s), watched by 0"),
        "{done}"
    );
    assert!(
        done.contains(&format!("{ALICE} watches {BOB_AOR}")),
        "{done}"
    );
    let none = execute(
        &mut w,
        ADMIN,
        "s2",
        "subscriptions",
        &form(&[("user", "carol@example.org")]),
    );
    assert!(none.contains("watches 0 LCS user(s)"), "{none}");
}

/// `end-subscription`: both directions between the user and the LCS user end as if the user
/// had ended them — SUBSCRIBE `Expires: 0` and NOTIFY `terminated;reason=rejected` to LCS,
/// `unsubscribed` and `unsubscribe` to the user, both records gone — and the same command
/// from the socket reports when there is nothing to end.
#[test]
fn end_subscription_ends_both_directions_as_the_user_would() {
    use crate::sip::message::Method;
    use crate::store::{Direction, Store};
    let mut w = World::new();
    let bob = contact_jid("bob");
    w.lcs
        .documents
        .insert(BOB_AOR.into(), pidf(BOB_AOR, "away"));
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribe'/>"
    ));
    w.settle();
    w.lcs_subscribes(BOB_AOR, "sip:alice@example.org");
    w.settle();
    w.xmpp_sends(&format!(
        "<presence from='{ALICE}' to='{bob}' type='subscribed'/>"
    ));
    w.run_for(std::time::Duration::from_secs(10));
    for d in [Direction::Outbound, Direction::Inbound] {
        assert!(
            w.store
                .get_subscription(d, ALICE, BOB_AOR)
                .unwrap()
                .is_some(),
            "{d:?}"
        );
    }
    let subscribes = w.lcs.requests(&Method::Subscribe).len();
    let notifies = w.lcs.requests(&Method::Notify).len();

    let done = execute(
        &mut w,
        ADMIN,
        "x1",
        "end-subscription",
        &form(&[("user", ALICE), ("contact", "bob@Contoso.com")]),
    );
    assert!(done.contains("status='completed'"), "{done}");
    assert!(done.contains("ended"), "{done}");
    let unsubscribe = w.lcs.requests(&Method::Subscribe);
    assert_eq!(unsubscribe.len(), subscribes + 1);
    assert_eq!(unsubscribe[subscribes].header("Expires"), Some("0"));
    let notify = w.lcs.requests(&Method::Notify);
    assert_eq!(notify.len(), notifies + 1);
    let state = notify[notifies].header("Subscription-State").unwrap();
    assert!(
        state.starts_with("terminated") && state.contains("rejected"),
        "{state}"
    );
    let told = w.xmpp.to(ALICE);
    assert!(
        told.iter()
            .any(|s| s.contains("type='unsubscribed'") && s.contains(&bob)),
        "{told:?}"
    );
    assert!(
        told.iter()
            .any(|s| s.contains("type='unsubscribe'") && s.contains(&bob)),
        "{told:?}"
    );
    for d in [Direction::Outbound, Direction::Inbound] {
        assert!(
            w.store
                .get_subscription(d, ALICE, BOB_AOR)
                .unwrap()
                .is_none(),
            "{d:?}"
        );
    }
    assert!(
        w.admin_commands.is_empty(),
        "carried out by the engines, not the executor"
    );

    // From the socket: nothing left to end.
    w.admin_from_socket(
        7,
        Command::EndSubscription {
            user: ALICE.into(),
            contact: BOB_AOR.into(),
        },
    );
    w.settle();
    assert_eq!(w.admin_replies.len(), 1);
    let (id, outcome) = &w.admin_replies[0];
    assert_eq!(*id, 7);
    assert!(
        !outcome.ok && outcome.message.contains("no subscription"),
        "{outcome:?}"
    );
}
