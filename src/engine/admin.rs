//! The bridge's administration commands, sans-IO: XEP-0050 ad-hoc commands on the component
//! for the administrators `[admin] jids` names ([`AdminEngine`]), and the same commands as
//! `lcs-bridge admin` sends them over the local socket ([`parse_request`], one JSON object a
//! line). Both become one [`Command`]; what a command needs of the I/O side (the edge's
//! connections, the store, the runtime block list, a reload) goes out as
//! [`Output::Admin`] and its [`Outcome`] comes back as
//! [`Input::AdminDone`](super::bridge::Input::AdminDone); the runner's executor is the one code
//! path for both front ends. This module also words the outcomes ([`partners`],
//! [`subscriptions`], [`blocked`], [`unblocked`]), so the executor only gathers data.
//!
//! XEP-0050 as implemented: disco#items on the component with the commands node lists the
//! commands to administrators only (an empty list to anyone else, §2.2 leaves that to the
//! responder); `execute` of a command without fields completes at once; one with fields
//! answers `executing` with a form (XEP-0004 `form`) and a session id, and completes when the
//! form comes back (`complete` or `execute`, with the session id); a form may also come with
//! the first request. `cancel` ends a session. Errors (§4.6): `forbidden` to a JID that is not
//! an administrator, `item-not-found` for an unknown node, `bad-request` with `<bad-action/>`,
//! `<bad-sessionid/>` (also for a session that expired: expired ones are dropped, so they are
//! not told apart from unknown ones) or `<bad-payload/>`, `resource-constraint` when too many
//! sessions or commands are open.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};
use xmpp_parsers::minidom::Element;

use super::Output;
use crate::core::address::check_domain;
use crate::edge::pool::ConnSummary;
use crate::store::{Direction, Subscription};

pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";
const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_COMPONENT: &str = "jabber:component:accept";

/// Form sessions open at once (all administrators), and how long one lives.
pub const MAX_SESSIONS: usize = 64;
pub const SESSION_TTL: Duration = Duration::from_secs(600);
/// Commands waiting for the runner at once.
pub const MAX_PENDING: usize = 64;
/// Longest value of a form field or socket argument taken.
const MAX_VALUE: usize = 1024;
/// Most lines an outcome shows (the rest counted).
pub const MAX_LINES: usize = 2000;

/// One administration command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The configured partners, runtime blocks, and the connections the edge holds.
    Partners,
    /// A local user's subscriptions both ways (bare JID).
    Subscriptions { user: String },
    /// Refuse a SIP domain from now on (runtime only, on top of the configuration).
    Block { domain: String },
    /// Lift a runtime block.
    Unblock { domain: String },
    /// Reload the configuration and tables (as SIGHUP).
    Reload,
    /// End the subscriptions between a local user (bare JID) and an LCS user (AOR URI,
    /// `sip:user@domain`), both ways; carried out by the presence engine.
    EndSubscription { user: String, contact: String },
}

/// A command's node (XEP-0050) and name on the command line, its title, and its fields
/// (`var`, label).
struct Info {
    node: &'static str,
    name: &'static str,
    fields: &'static [(&'static str, &'static str)],
}

const COMMANDS: &[Info] = &[
    Info {
        node: "partners",
        name: "List partners and their connections",
        fields: &[],
    },
    Info {
        node: "subscriptions",
        name: "A user's subscriptions both ways",
        fields: &[("user", "Local user (bare JID)")],
    },
    Info {
        node: "block",
        name: "Block a SIP domain (runtime only)",
        fields: &[("domain", "SIP domain")],
    },
    Info {
        node: "unblock",
        name: "Lift a runtime block",
        fields: &[("domain", "SIP domain")],
    },
    Info {
        node: "end-subscription",
        name: "End the subscriptions between a user and an LCS user",
        fields: &[
            ("user", "Local user (bare JID)"),
            ("contact", "LCS user (sip:user@domain)"),
        ],
    },
    Info {
        node: "reload",
        name: "Reload the configuration and mapping tables",
        fields: &[],
    },
];

fn info(node: &str) -> Option<&'static Info> {
    COMMANDS.iter().find(|c| c.node == node)
}

/// The command names, for `lcs-bridge admin --help` texts and errors.
pub fn command_names() -> Vec<&'static str> {
    COMMANDS.iter().map(|c| c.node).collect()
}

impl Command {
    /// The command `node` with its field values (XEP-0050 form or socket arguments, in the
    /// order of its fields); a clear reason when they do not make one.
    pub fn from_values(node: &str, values: &[String]) -> Result<Command, String> {
        let Some(info) = info(node) else {
            return Err(format!(
                "unknown command {:?} (commands: {})",
                crate::core::xml_chars::clean(&node.chars().take(64).collect::<String>()),
                command_names().join(", ")
            ));
        };
        if values.len() != info.fields.len() {
            let wanted: Vec<&str> = info.fields.iter().map(|(v, _)| *v).collect();
            return Err(format!(
                "{node} takes {} argument(s){}{}",
                wanted.len(),
                if wanted.is_empty() { "" } else { ": " },
                wanted.join(" ")
            ));
        }
        if let Some(v) = values.iter().find(|v| v.len() > MAX_VALUE) {
            return Err(format!("a value of {} bytes is too long", v.len()));
        }
        let one = || values[0].trim().to_owned();
        Ok(match node {
            "partners" => Command::Partners,
            "reload" => Command::Reload,
            "subscriptions" => Command::Subscriptions {
                user: bare_jid(&one())?,
            },
            "block" => Command::Block {
                domain: domain(&one())?,
            },
            "end-subscription" => Command::EndSubscription {
                user: bare_jid(&one())?,
                contact: aor(values[1].trim())?,
            },
            _ => Command::Unblock {
                domain: domain(&one())?,
            },
        })
    }

    /// Its node / command-line name.
    pub fn node(&self) -> &'static str {
        match self {
            Command::Partners => "partners",
            Command::Subscriptions { .. } => "subscriptions",
            Command::Block { .. } => "block",
            Command::Unblock { .. } => "unblock",
            Command::Reload => "reload",
            Command::EndSubscription { .. } => "end-subscription",
        }
    }
}

/// A SIP domain as the configuration takes it (lowercase DNS name, no IP address).
fn domain(s: &str) -> Result<String, String> {
    let d = s.trim().to_ascii_lowercase();
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{d:?} is an IP address, not a domain name"));
    }
    check_domain("domain", &d).map(|()| d.clone()).map_err(|e| {
        format!(
            "{:?} is not a domain name: {e}",
            crate::core::xml_chars::clean(s)
        )
    })
}

/// An LCS user's address of record, `sip:user@domain` (the scheme may be left out), domain
/// lowercased.
fn aor(s: &str) -> Result<String, String> {
    let bare = s.strip_prefix("sip:").unwrap_or(s);
    let shown = || crate::core::xml_chars::clean(s).into_owned();
    let (user, host) = bare
        .split_once('@')
        .filter(|(u, _)| !u.is_empty() && !u.contains([' ', ';', '<', '>', '@']))
        .ok_or_else(|| format!("{:?} is not an LCS address (sip:user@domain)", shown()))?;
    Ok(format!("sip:{user}@{}", domain(host)?))
}

/// A bare JID (`user@domain`), domain lowercased.
fn bare_jid(s: &str) -> Result<String, String> {
    let jid = xmpp_parsers::jid::BareJid::new(s.trim()).map_err(|e| {
        format!(
            "{:?} is not a bare JID: {e}",
            crate::core::xml_chars::clean(s)
        )
    })?;
    if jid.node().is_none() {
        return Err(format!("{jid} is a domain, not a user"));
    }
    Ok(jid.to_string())
}

/// Attributes through the one attribute setter (`xmpp::attr`).
trait Attr {
    fn a(self, name: &str, value: &str) -> Self;
}

impl Attr for xmpp_parsers::minidom::ElementBuilder {
    fn a(self, name: &str, value: &str) -> Self {
        crate::xmpp::attr(self, name, value)
    }
}

/// What a command did: `ok`, one line for people, and the details one per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
    pub lines: Vec<String>,
}

impl Outcome {
    pub fn ok(message: impl Into<String>, lines: Vec<String>) -> Outcome {
        Outcome {
            ok: true,
            message: message.into(),
            lines: capped(lines),
        }
    }

    pub fn failed(message: impl Into<String>, lines: Vec<String>) -> Outcome {
        Outcome {
            ok: false,
            message: message.into(),
            lines: capped(lines),
        }
    }

    /// One JSON object on one line (the socket's answer).
    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"ok":false,"message":"the outcome could not be written","lines":[]}"#.to_owned()
        });
        s.push('\n');
        s
    }
}

fn capped(mut lines: Vec<String>) -> Vec<String> {
    if lines.len() > MAX_LINES {
        let more = lines.len() - MAX_LINES;
        lines.truncate(MAX_LINES);
        lines.push(format!("… and {more} more"));
    }
    lines
}

/// A socket request line: `{"command": "block", "args": ["contoso.com"]}`.
pub fn parse_request(line: &str) -> Result<Command, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        command: String,
        #[serde(default)]
        args: Vec<String>,
    }
    let r: Request = serde_json::from_str(line)
        .map_err(|e| format!("not a request ({e}): expected {{\"command\": …, \"args\": […]}}"))?;
    Command::from_values(&r.command, &r.args)
}

/// The request line `lcs-bridge admin` sends for `command` with `args`.
pub fn request_line(command: &str, args: &[String]) -> String {
    let mut s = serde_json::json!({ "command": command, "args": args }).to_string();
    s.push('\n');
    s
}

// ------------------------------------------------------------------ outcomes worded

/// `partners`: each configured partner with its policy, the runtime blocks, then every
/// connection (id, direction, the domain it was opened for or the certificate's names,
/// transactions outstanding).
pub fn partners(
    configured: &[(String, &'static str)],
    runtime_blocks: &BTreeSet<String>,
    default_policy: &str,
    conns: &[ConnSummary],
) -> Outcome {
    let mut lines = vec![format!("default policy: {default_policy}")];
    for (domain, policy) in configured {
        let runtime = if runtime_blocks.contains(domain) {
            " (blocked at runtime)"
        } else {
            ""
        };
        lines.push(format!("partner {domain}: {policy}{runtime}"));
    }
    for domain in runtime_blocks {
        if !configured.iter().any(|(d, _)| d == domain) {
            lines.push(format!("blocked at runtime: {domain}"));
        }
    }
    for c in conns {
        let names = if c.names.is_empty() {
            "(handshake under way)".to_owned()
        } else {
            c.names.join(" ")
        };
        lines.push(match &c.outbound {
            Some((domain, edge)) => format!(
                "connection {}: outbound to {domain} via {edge}, certificate {names}, {} pending",
                c.conn, c.pending
            ),
            None => format!(
                "connection {}: inbound, certificate {names}, {} pending",
                c.conn, c.pending
            ),
        });
    }
    Outcome::ok(
        format!(
            "{} partner(s) configured, {} blocked at runtime, {} connection(s)",
            configured.len(),
            runtime_blocks.len(),
            conns.len()
        ),
        lines,
    )
}

/// `subscriptions USER`: the user's stored subscriptions, those to LCS users first.
pub fn subscriptions(user: &str, all: &[Subscription]) -> Outcome {
    let mut lines = Vec::new();
    let mut counts = [0usize; 2];
    for (i, direction) in [Direction::Outbound, Direction::Inbound]
        .into_iter()
        .enumerate()
    {
        for s in all
            .iter()
            .filter(|s| s.direction == direction && s.local_jid == user)
        {
            counts[i] += 1;
            let arrow = match direction {
                Direction::Outbound => format!("{user} watches {}", s.remote_aor),
                Direction::Inbound => format!("{} watches {user}", s.remote_aor),
            };
            lines.push(format!(
                "{arrow}: {:?}, approval {:?}, expires at {} (Unix), {}",
                s.state,
                s.approval,
                s.expires_unix,
                if s.dialog.is_some() {
                    "dialog up"
                } else {
                    "no dialog"
                }
            ));
        }
    }
    Outcome::ok(
        format!(
            "{user}: watches {} LCS user(s), watched by {}",
            counts[0], counts[1]
        ),
        lines,
    )
}

/// `block DOMAIN` done (`already`: it was blocked at runtime before).
pub fn blocked(domain: &str, already: bool) -> Outcome {
    Outcome::ok(
        if already {
            format!("{domain} was already blocked")
        } else {
            format!("{domain} blocked")
        },
        vec![
            "its requests are refused (403) and nothing is sent to it, also in dialogs already up"
                .to_owned(),
            format!(
                "runtime only: add [[federation.partners]] domain = \"{domain}\" policy = \"block\" to keep it"
            ),
        ],
    )
}

/// `unblock DOMAIN` done (`was`: it was blocked at runtime; `configured`: the configuration
/// blocks it too, so it stays blocked).
pub fn unblocked(domain: &str, was: bool, configured: bool) -> Outcome {
    match (was, configured) {
        (_, true) => Outcome::failed(
            format!("{domain} stays blocked: the configuration blocks it"),
            vec!["remove its [[federation.partners]] entry and reload to lift it".to_owned()],
        ),
        (true, false) => Outcome::ok(format!("{domain} unblocked"), Vec::new()),
        (false, false) => {
            Outcome::failed(format!("{domain} was not blocked at runtime"), Vec::new())
        }
    }
}

/// `end-subscription USER CONTACT` done: which directions there were.
pub fn ended(user: &str, contact: &str, directions: &[Direction]) -> Outcome {
    if directions.is_empty() {
        return Outcome::failed(
            format!("no subscription between {user} and {contact}"),
            Vec::new(),
        );
    }
    let lines = directions
        .iter()
        .map(|d| match d {
            Direction::Outbound => format!(
                "{user} no longer watches {contact}: unsubscribed at LCS, the user told unsubscribed"
            ),
            Direction::Inbound => format!(
                "{contact} no longer watches {user}: NOTIFY terminated (rejected), the user told unsubscribe"
            ),
        })
        .collect();
    Outcome::ok(
        format!("subscriptions between {user} and {contact} ended"),
        lines,
    )
}

// ------------------------------------------------------------------ XEP-0050

/// An open form session.
#[derive(Debug)]
struct Session {
    node: &'static str,
    /// The full JID that opened it: only it may go on.
    owner: String,
    expires: Instant,
}

/// A command waiting for its outcome, and whom to tell.
#[derive(Debug)]
enum Pending {
    /// A XEP-0050 request: the requester, the component address it wrote to, the IQ id.
    Iq {
        from: String,
        to: String,
        id: String,
        node: &'static str,
        session: String,
    },
    /// The runner's command with this id ([`Input::Admin`](super::bridge::Input::Admin)).
    Runner(u64),
}

/// The XEP-0050 front end (see the module documentation).
#[derive(Debug)]
pub struct AdminEngine {
    components: Vec<String>,
    admins: BTreeSet<String>,
    sessions: HashMap<String, Session>,
    pending: HashMap<u64, Pending>,
    next: u64,
}

impl AdminEngine {
    /// `components`: the component domains (commands are on these addresses); `admins`: bare
    /// JIDs (`[admin] jids`).
    pub fn new(components: Vec<String>, admins: impl IntoIterator<Item = String>) -> AdminEngine {
        AdminEngine {
            components: components
                .into_iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            admins: admins.into_iter().collect(),
            sessions: HashMap::new(),
            pending: HashMap::new(),
            next: 1,
        }
    }

    /// A reload's administrators: from the next request on (open sessions of a JID no longer
    /// listed are refused when they go on).
    pub fn set_admins(&mut self, admins: impl IntoIterator<Item = String>) {
        self.admins = admins.into_iter().collect();
    }

    /// Whether this stanza is for this engine: disco#items of the commands node, or a command,
    /// addressed to a component domain itself.
    pub fn takes(&self, el: &Element) -> bool {
        if el.name() != "iq" {
            return false;
        }
        let to = el.attr("to").unwrap_or("").to_ascii_lowercase();
        if !self.components.contains(&to) {
            return false;
        }
        match el.attr("type") {
            Some("get") => el
                .children()
                .any(|c| c.is("query", NS_DISCO_ITEMS) && c.attr("node") == Some(NS_COMMANDS)),
            Some("set") => el.children().any(|c| c.is("command", NS_COMMANDS)),
            _ => false,
        }
    }

    fn is_admin(&self, from: &str) -> bool {
        let bare = from.split('/').next().unwrap_or("");
        let bare = match bare.split_once('@') {
            Some((node, domain)) => format!("{node}@{}", domain.to_ascii_lowercase()),
            None => return false,
        };
        self.admins.contains(&bare)
    }

    /// An IQ it takes, at `now`.
    pub fn on_iq(&mut self, now: Instant, iq: &Element) -> Vec<Output> {
        let from = iq.attr("from").unwrap_or("").to_owned();
        let admin = self.is_admin(&from);
        if iq.attr("type") == Some("get") {
            return vec![Output::Stanza(self.items(iq, admin))];
        }
        let Some(cmd) = iq.children().find(|c| c.is("command", NS_COMMANDS)) else {
            return Vec::new();
        };
        if !admin {
            warn!(
                from = %crate::core::xml_chars::clean(&from),
                node = %crate::core::xml_chars::clean(cmd.attr("node").unwrap_or("")),
                "admin command refused: the sender is not in admin.jids"
            );
            return vec![Output::Stanza(error(
                iq,
                "auth",
                "forbidden",
                None,
                "administrators only",
            ))];
        }
        let node = cmd.attr("node").unwrap_or("");
        let Some(info) = info(node) else {
            return vec![Output::Stanza(error(
                iq,
                "cancel",
                "item-not-found",
                None,
                "no such command",
            ))];
        };
        self.sessions.retain(|_, s| s.expires > now);
        let action = cmd.attr("action").unwrap_or("execute");
        let session_id = cmd.attr("sessionid");
        if let Some(sid) = session_id {
            match self.sessions.get(sid) {
                Some(s) if s.owner == from && s.node == info.node => {}
                _ => {
                    return vec![Output::Stanza(error(
                        iq,
                        "modify",
                        "bad-request",
                        Some("bad-sessionid"),
                        "no such session (or it expired)",
                    ))];
                }
            }
        }
        match action {
            "cancel" => {
                let sid = session_id.unwrap_or("").to_owned();
                self.sessions.remove(&sid);
                return vec![Output::Stanza(command_reply(
                    iq,
                    info.node,
                    &sid,
                    "canceled",
                    Vec::new(),
                ))];
            }
            "execute" | "complete" => {}
            _ => {
                return vec![Output::Stanza(error(
                    iq,
                    "modify",
                    "bad-request",
                    Some("bad-action"),
                    "only execute, complete and cancel",
                ))];
            }
        }
        let submitted = cmd
            .children()
            .find(|x| x.is("x", NS_DATA) && x.attr("type") == Some("submit"));
        let sid = match session_id {
            Some(s) => s.to_owned(),
            None => {
                if self.sessions.len() >= MAX_SESSIONS {
                    return vec![Output::Stanza(error(
                        iq,
                        "wait",
                        "resource-constraint",
                        None,
                        "too many command sessions open",
                    ))];
                }
                let sid = format!("s{}", self.next);
                self.next += 1;
                sid
            }
        };
        let values = match submitted {
            Some(form) => form_values(form, info),
            None if info.fields.is_empty() => Vec::new(),
            None => {
                self.sessions.insert(
                    sid.clone(),
                    Session {
                        node: info.node,
                        owner: from,
                        expires: now + SESSION_TTL,
                    },
                );
                return vec![Output::Stanza(command_reply(
                    iq,
                    info.node,
                    &sid,
                    "executing",
                    vec![actions(), form(info)],
                ))];
            }
        };
        let command = match Command::from_values(info.node, &values) {
            Ok(c) => c,
            Err(reason) => {
                return vec![Output::Stanza(error(
                    iq,
                    "modify",
                    "bad-request",
                    Some("bad-payload"),
                    &reason,
                ))];
            }
        };
        if self.pending.len() >= MAX_PENDING {
            return vec![Output::Stanza(error(
                iq,
                "wait",
                "resource-constraint",
                None,
                "too many commands under way",
            ))];
        }
        self.sessions.remove(&sid);
        info!(from = %from, command = info.node, "admin command requested (XEP-0050)");
        let id = self.next;
        self.next += 1;
        self.pending.insert(
            id,
            Pending::Iq {
                from,
                to: iq.attr("to").unwrap_or("").to_owned(),
                id: iq.attr("id").unwrap_or("").to_owned(),
                node: info.node,
                session: sid,
            },
        );
        vec![dispatch(id, command)]
    }

    /// A command from the runner (the local socket) that the engines carry out.
    pub fn from_runner(&mut self, runner_id: u64, command: Command) -> Vec<Output> {
        if !matches!(command, Command::EndSubscription { .. }) {
            let outcome = Outcome::failed("not a command the engines carry out", Vec::new());
            return vec![Output::AdminReply {
                id: runner_id,
                outcome,
            }];
        }
        if self.pending.len() >= MAX_PENDING {
            let outcome = Outcome::failed("too many commands under way", Vec::new());
            return vec![Output::AdminReply {
                id: runner_id,
                outcome,
            }];
        }
        let id = self.next;
        self.next += 1;
        self.pending.insert(id, Pending::Runner(runner_id));
        vec![dispatch(id, command)]
    }

    /// The outcome of command `id`: the completed command to its requester.
    pub fn done(&mut self, id: u64, outcome: &Outcome) -> Vec<Output> {
        let (from, to, iq_id, node, session) = match self.pending.remove(&id) {
            None => return Vec::new(),
            Some(Pending::Runner(id)) => {
                return vec![Output::AdminReply {
                    id,
                    outcome: outcome.clone(),
                }];
            }
            Some(Pending::Iq {
                from,
                to,
                id,
                node,
                session,
            }) => (from, to, id, node, session),
        };
        let mut children = vec![
            Element::builder("note", NS_COMMANDS)
                .a("type", if outcome.ok { "info" } else { "error" })
                .append(outcome.message.as_str())
                .build(),
        ];
        if !outcome.lines.is_empty() {
            let field = outcome.lines.iter().fold(
                Element::builder("field", NS_DATA)
                    .a("var", "result")
                    .a("type", "text-multi")
                    .a("label", "Details"),
                |f, line| f.append(Element::builder("value", NS_DATA).append(line.as_str())),
            );
            children.push(
                Element::builder("x", NS_DATA)
                    .a("type", "result")
                    .append(Element::builder("title", NS_DATA).append(outcome.message.as_str()))
                    .append(field)
                    .build(),
            );
        }
        let command = children.into_iter().fold(
            Element::builder("command", NS_COMMANDS)
                .a("node", node)
                .a("sessionid", session.as_str())
                .a("status", "completed"),
            |c, child| c.append(child),
        );
        let reply = Element::builder("iq", NS_COMPONENT)
            .a("type", "result")
            .a("from", to.as_str())
            .a("to", from.as_str())
            .a("id", iq_id.as_str())
            .append(command)
            .build();
        vec![Output::Stanza(reply)]
    }

    /// disco#items of the commands node: the commands to administrators, nothing to others.
    fn items(&self, iq: &Element, admin: bool) -> Element {
        let to = iq.attr("to").unwrap_or("");
        let mut query = Element::builder("query", NS_DISCO_ITEMS).a("node", NS_COMMANDS);
        if admin {
            for c in COMMANDS {
                query = query.append(
                    Element::builder("item", NS_DISCO_ITEMS)
                        .a("jid", to)
                        .a("node", c.node)
                        .a("name", c.name),
                );
            }
        }
        reply(iq, "result").append(query).build()
    }
}

/// Where command `id` goes: the presence engine for `end-subscription`, the runner's executor
/// for the rest.
fn dispatch(id: u64, command: Command) -> Output {
    match command {
        Command::EndSubscription { user, contact } => Output::Fact(super::Fact::EndSubscription {
            id,
            local: user,
            remote: contact,
        }),
        command => Output::Admin { id, command },
    }
}

/// The submitted values of `info`'s fields, in its order (a missing field is empty).
fn form_values(form: &Element, info: &Info) -> Vec<String> {
    let fields: BTreeMap<&str, String> = form
        .children()
        .filter(|f| f.is("field", NS_DATA))
        .filter_map(|f| {
            let value = f
                .children()
                .find(|v| v.is("value", NS_DATA))
                .map(Element::text)
                .unwrap_or_default();
            f.attr("var").map(|var| (var, value))
        })
        .collect();
    info.fields
        .iter()
        .map(|(var, _)| fields.get(var).cloned().unwrap_or_default())
        .collect()
}

/// The form of a command's fields (XEP-0004 `form`).
fn form(info: &Info) -> Element {
    let mut x = Element::builder("x", NS_DATA)
        .a("type", "form")
        .append(Element::builder("title", NS_DATA).append(info.name));
    for (var, label) in info.fields {
        x = x.append(
            Element::builder("field", NS_DATA)
                .a("var", var)
                .a("type", "text-single")
                .a("label", label)
                .append(Element::builder("required", NS_DATA)),
        );
    }
    x.build()
}

/// The actions a form step allows: complete (XEP-0050 §3.4).
fn actions() -> Element {
    Element::builder("actions", NS_COMMANDS)
        .a("execute", "complete")
        .append(Element::builder("complete", NS_COMMANDS))
        .build()
}

/// The reply skeleton to `iq` (addresses swapped, its id).
fn reply(iq: &Element, kind: &str) -> xmpp_parsers::minidom::ElementBuilder {
    Element::builder("iq", NS_COMPONENT)
        .a("type", kind)
        .a("from", iq.attr("to").unwrap_or(""))
        .a("to", iq.attr("from").unwrap_or(""))
        .a("id", iq.attr("id").unwrap_or(""))
}

/// A `<command/>` result with this status and children.
fn command_reply(
    iq: &Element,
    node: &str,
    sid: &str,
    status: &str,
    children: Vec<Element>,
) -> Element {
    let command = children.into_iter().fold(
        Element::builder("command", NS_COMMANDS)
            .a("node", node)
            .a("sessionid", sid)
            .a("status", status),
        |c, child| c.append(child),
    );
    reply(iq, "result").append(command).build()
}

/// An IQ error (RFC 6120 §8.3) with XEP-0050's specific condition, if any, and a text.
fn error(iq: &Element, kind: &str, condition: &str, specific: Option<&str>, text: &str) -> Element {
    let mut e = Element::builder("error", NS_COMPONENT)
        .a("type", kind)
        .append(Element::builder(condition, NS_STANZAS))
        .append(Element::builder("text", NS_STANZAS).append(text));
    if let Some(s) = specific {
        e = e.append(Element::builder(s, NS_COMMANDS));
    }
    reply(iq, "error").append(e).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn socket_requests_become_commands_or_clear_reasons() {
        assert_eq!(
            parse_request(r#"{"command":"partners"}"#),
            Ok(Command::Partners)
        );
        assert_eq!(
            parse_request(r#"{"command":"block","args":["Contoso.COM"]}"#),
            Ok(Command::Block {
                domain: "contoso.com".into()
            })
        );
        assert_eq!(
            parse_request(
                r#"{"command":"end-subscription","args":["alice@Example.org","joe@Contoso.com"]}"#
            ),
            Ok(Command::EndSubscription {
                user: "alice@example.org".into(),
                contact: "sip:joe@contoso.com".into()
            })
        );
        for (line, reason) in [
            ("not json", "not a request"),
            (r#"{"command":"partners","extra":1}"#, "not a request"),
            (r#"{"command":"reboot"}"#, "unknown command"),
            (
                r#"{"command":"block"}"#,
                "block takes 1 argument(s): domain",
            ),
            (
                r#"{"command":"block","args":["10.0.0.1"]}"#,
                "is an IP address",
            ),
            (
                r#"{"command":"block","args":["a b"]}"#,
                "is not a domain name",
            ),
            (
                r#"{"command":"subscriptions","args":["example.org"]}"#,
                "is a domain, not a user",
            ),
            (
                r#"{"command":"end-subscription","args":["a@example.org","joe"]}"#,
                "is not an LCS address",
            ),
        ] {
            let got = parse_request(line).expect_err(line);
            assert!(got.contains(reason), "{line}: {got}");
        }
        let huge = "x".repeat(MAX_VALUE + 1);
        let got = Command::from_values("block", &[huge]).unwrap_err();
        assert!(got.contains("too long"), "{got}");
        // What the CLI sends is what the socket reads.
        let line = request_line("unblock", &strings(&["contoso.com"]));
        assert_eq!(
            parse_request(line.trim_end()),
            Ok(Command::Unblock {
                domain: "contoso.com".into()
            })
        );
    }

    #[test]
    fn outcomes_are_one_json_line_and_capped() {
        let many: Vec<String> = (0..MAX_LINES + 5).map(|i| format!("line {i}")).collect();
        let o = Outcome::ok("done", many);
        assert_eq!(o.lines.len(), MAX_LINES + 1);
        assert_eq!(o.lines.last().map(String::as_str), Some("… and 5 more"));
        let json = Outcome::failed("a \"quoted\"\nmessage", vec!["x".into()]).to_json_line();
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        assert!(json.ends_with('\n'));
    }
}
