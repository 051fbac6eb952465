#!/usr/bin/env python3
"""A scripted XMPP client (slixmpp) for lcs-bridge's end-to-end tests (im_e2e, presence_e2e).

Logs in as a registered user over plain c2s (the test servers allow PLAIN without TLS), sends
what it is told on standard input and prints every event on standard output, one JSON object
per line:

  {"event": "online"}                      session started (initial presence sent)
  {"event": "disconnected"}                the stream was lost (with --reconnect: reconnecting,
                                           else waiting for "connect")
  {"event": "sent", "id": ID}              a message went out
  {"event": "message", "from": JID, "type": T, "id": ID, "body": TEXT or null,
   "thread": T or null, "chatstates": [NAMES], "received": [IDS], "request_receipt": BOOL,
   "delay": BOOL, "error": {"type": T, "condition": NAME, "text": T} or null,
   "rosterx": [{"action": A, "jid": JID, "name": NAME or null}]}   (XEP-0144 items, if any)
  {"event": "presence", "from": JID, "to": JID, "type": T ("available" when absent),
   "show": S or null, "status": TEXT or null, "nick": XEP-0172 NICK or null,
   "priority": N or null, "id": ID or null, "error": {...} or null}
  {"event": "roster", "items": [ITEM]}     the answer to a "roster" command (a roster get)
  {"event": "roster_push", "items": [ITEM]} a roster push from the server (RFC 6121 §2.1.6)
      ITEM: {"jid": JID, "name": NAME or null, "subscription": S, "ask": A or null,
             "groups": [NAMES]}
  {"event": "vcard", "from": JID, "fn": TEXT or null, "nickname": TEXT or null,
   "url": TEXT or null, "error": CONDITION or null}   the answer to a "vcard" command

Subscriptions are not answered automatically (slixmpp's auto_authorize/auto_subscribe are
off): the test answers with "presence" commands. With --approve the client approves every
subscription request itself (auto_authorize), as a user who accepts every contact would.

Commands on standard input, one JSON object per line:

  {"op": "send", "to": JID, "body": TEXT (optional), "id": ID (optional), "type": "chat",
   "chatstate": "composing"|"paused"|"active"|... (optional), "receipt": BOOL (optional)}
  {"op": "presence", "to": JID (optional), "type": "subscribe"|"subscribed"|"unsubscribe"|
   "unsubscribed"|"unavailable" (optional), "show": S (optional), "status": TEXT (optional)}
  {"op": "block"|"unblock", "jid": JID}    XEP-0191: block or unblock a contact; prints
                                           {"event": "iq", "op": OP, "type": "result"|"error"}
  {"op": "roster"}                         fetch the roster (roster get) and print it
  {"op": "vcard", "to": JID}               ask JID for its vcard-temp (XEP-0054) and print it
  {"op": "connect"}                        connect again after the stream was lost (and keep
                                           trying every 0.2 s until it is up)
  {"op": "quit"}                           disconnect cleanly and exit 0

The client exits by itself (status 3) after --timeout seconds, or when standard input closes.
"""

import argparse
import asyncio
import json
import logging
import sys
import xml.etree.ElementTree as ET

import slixmpp
import slixmpp.exceptions
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

NS_CLIENT = "jabber:client"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"
NS_RECEIPTS = "urn:xmpp:receipts"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"
NS_NICK = "http://jabber.org/protocol/nick"
NS_ROSTER = "jabber:iq:roster"
NS_ROSTERX = "http://jabber.org/protocol/rosterx"
NS_VCARD = "vcard-temp"


def roster_items(xml):
    """The items of a roster query in an <iq/>."""
    items = []
    for item in xml.iter("{%s}item" % NS_ROSTER):
        items.append(
            {
                "jid": item.get("jid"),
                "name": item.get("name"),
                "subscription": item.get("subscription", "none"),
                "ask": item.get("ask"),
                "groups": [g.text or "" for g in item.findall("{%s}group" % NS_ROSTER)],
            }
        )
    return items


def emit(obj):
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def describe(xml):
    """The parts of a <message/> the tests look at."""

    def text(tag):
        el = xml.find("{%s}%s" % (NS_CLIENT, tag))
        return None if el is None else (el.text or "")

    error = None
    err = xml.find("{%s}error" % NS_CLIENT)
    if err is not None:
        condition, etext = None, None
        for child in err:
            ns, _, name = child.tag[1:].partition("}")
            if ns == NS_STANZAS and name == "text":
                etext = child.text
            elif ns == NS_STANZAS:
                condition = name
        error = {"type": err.get("type"), "condition": condition, "text": etext}
    chatstates, received, request = [], [], False
    rosterx = [
        {"action": i.get("action", "add"), "jid": i.get("jid"), "name": i.get("name")}
        for i in xml.iter("{%s}item" % NS_ROSTERX)
    ]
    for child in xml:
        ns, _, name = child.tag[1:].partition("}")
        if ns == NS_CHATSTATES:
            chatstates.append(name)
        elif ns == NS_RECEIPTS and name == "received":
            received.append(child.get("id"))
        elif ns == NS_RECEIPTS and name == "request":
            request = True
    return {
        "event": "message",
        "from": xml.get("from"),
        "to": xml.get("to"),
        "type": xml.get("type", "normal"),
        "id": xml.get("id"),
        "body": text("body"),
        "thread": text("thread"),
        "chatstates": chatstates,
        "received": received,
        "request_receipt": request,
        "delay": xml.find("{%s}delay" % NS_DELAY) is not None,
        "error": error,
        "rosterx": rosterx,
    }


def describe_presence(xml):
    """The parts of a <presence/> the tests look at."""

    def text(tag, ns=NS_CLIENT):
        el = xml.find("{%s}%s" % (ns, tag))
        return None if el is None else (el.text or "")

    error = None
    err = xml.find("{%s}error" % NS_CLIENT)
    if err is not None:
        condition = None
        for child in err:
            ns, _, name = child.tag[1:].partition("}")
            if ns == NS_STANZAS and name != "text":
                condition = name
        error = {"type": err.get("type"), "condition": condition}
    priority = text("priority")
    return {
        "event": "presence",
        "from": xml.get("from"),
        "to": xml.get("to"),
        "type": xml.get("type", "available"),
        "id": xml.get("id"),
        "show": text("show"),
        "status": text("status"),
        "nick": text("nick", NS_NICK),
        "priority": None if priority is None else int(priority),
        "error": error,
    }


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, host, port, reconnect, approve):
        super().__init__(jid, password)
        self.address = (host, port)
        self.reconnect_wanted = reconnect
        self.quitting = False
        self.tasks = set()
        # Plain c2s: the test servers offer STARTTLS with a self-signed certificate and
        # allow PLAIN without it.
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.plugin["feature_mechanisms"].unencrypted_plain = True
        self.register_handler(
            Callback("every message", MatchXPath("{%s}message" % NS_CLIENT), self.on_message)
        )
        self.register_handler(
            Callback("every presence", MatchXPath("{%s}presence" % NS_CLIENT), self.on_presence)
        )
        # The tests answer subscription requests themselves, unless --approve.
        self.roster.auto_authorize = True if approve else None
        self.roster.auto_subscribe = False
        self.add_event_handler("roster_update", self.on_roster_update)
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("connection_failed", self.on_failed)

    def start(self):
        self.connect(*self.address)

    async def on_start(self, _event):
        # Fetch the roster first, as real clients do: Prosody hands `subscribed` and roster
        # pushes only to "interested" resources (those that requested the roster).
        await self.get_roster()
        self.send_presence()
        emit({"event": "online"})

    def on_roster_update(self, iq):
        emit({"event": "roster_push", "items": roster_items(iq.xml)})

    async def roster_command(self):
        iq = self.make_iq_get(queryxmlns=NS_ROSTER)
        result = await iq.send(timeout=10)
        emit({"event": "roster", "items": roster_items(result.xml)})

    async def vcard_command(self, cmd):
        iq = self.make_iq_get(ito=cmd["to"])
        iq.append(ET.Element("{%s}vCard" % NS_VCARD))
        event = {"event": "vcard", "from": cmd["to"], "fn": None, "nickname": None, "url": None,
                 "error": None}
        try:
            result = await iq.send(timeout=10)
            card = result.xml.find("{%s}vCard" % NS_VCARD)
            if card is not None:
                for field in ("FN", "NICKNAME", "URL"):
                    el = card.find("{%s}%s" % (NS_VCARD, field))
                    event[field.lower()] = None if el is None else (el.text or "")
        except slixmpp.exceptions.IqError as e:
            event["error"] = e.iq["error"]["condition"]
        except slixmpp.exceptions.IqTimeout:
            event["error"] = "timeout"
        emit(event)

    def on_message(self, msg):
        emit(describe(msg.xml))

    def on_presence(self, pres):
        emit(describe_presence(pres.xml))

    def presence_command(self, cmd):
        pres = self.make_presence(
            pto=cmd.get("to"),
            ptype=cmd.get("type"),
            pshow=cmd.get("show"),
            pstatus=cmd.get("status"),
        )
        pres.send()
        emit({"event": "sent", "presence": cmd.get("type", "available")})

    def block_command(self, cmd):
        """XEP-0191 §3.3/§3.4: a <block/> or <unblock/> with one item, as an IQ set."""
        op = cmd["op"]
        iq = self.make_iq_set()
        command = ET.Element("{urn:xmpp:blocking}%s" % op)
        ET.SubElement(command, "{urn:xmpp:blocking}item", {"jid": cmd["jid"]})
        iq.xml.append(command)

        async def send():
            try:
                await iq.send()
                emit({"event": "iq", "op": op, "type": "result"})
            except IqError as e:
                emit({"event": "iq", "op": op, "type": "error", "error": str(e)})
            except IqTimeout:
                emit({"event": "iq", "op": op, "type": "timeout"})

        asyncio.ensure_future(send())

    def on_disconnected(self, _reason):
        emit({"event": "disconnected"})
        if self.reconnect_wanted and not self.quitting:
            self.loop.call_later(0.2, self.start)

    def on_failed(self, _error):
        # slixmpp would retry with a growing delay; retry every 0.2 s instead.
        if self.reconnect_wanted and not self.quitting:
            self.cancel_connection_attempt()
            self.loop.call_later(0.2, self.start)

    def send_command(self, cmd):
        msg = self.make_message(mto=cmd["to"], mtype=cmd.get("type", "chat"))
        if "body" in cmd:
            msg["body"] = cmd["body"]
        if "id" in cmd:
            msg["id"] = cmd["id"]
        if cmd.get("chatstate"):
            msg.append(ET.Element("{%s}%s" % (NS_CHATSTATES, cmd["chatstate"])))
        if cmd.get("receipt"):
            msg.append(ET.Element("{%s}request" % NS_RECEIPTS))
        msg.send()
        emit({"event": "sent", "id": msg["id"]})


def keep(client, coroutine):
    """Runs `coroutine` as a task the client holds until it ends (the loop holds tasks only
    weakly)."""
    task = asyncio.ensure_future(coroutine)
    client.tasks.add(task)
    task.add_done_callback(client.tasks.discard)


async def commands(client, done):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        if cmd["op"] == "send":
            client.send_command(cmd)
        elif cmd["op"] == "presence":
            client.presence_command(cmd)
        elif cmd["op"] in ("block", "unblock"):
            client.block_command(cmd)
        elif cmd["op"] == "roster":
            keep(client, client.roster_command())
        elif cmd["op"] == "vcard":
            keep(client, client.vcard_command(cmd))
        elif cmd["op"] == "connect":
            client.reconnect_wanted = True
            client.start()
        elif cmd["op"] == "quit":
            break
    client.quitting = True
    client.disconnect(wait=1.0)
    done.set_result(0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jid", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--reconnect", action="store_true", help="reconnect when the stream is lost")
    p.add_argument("--approve", action="store_true", help="approve every subscription request")
    p.add_argument("--debug", action="store_true", help="slixmpp debug log on stderr")
    args = p.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    client = Client(args.jid, args.password, args.host, args.port, args.reconnect, args.approve)
    done = loop.create_future()
    client.start()
    # Keep a reference: the event loop holds tasks only weakly, and a pending task nobody
    # references is destroyed by the next garbage collection (the client then ignores every
    # later command; seen under the crash test's stream of presences).
    reader = loop.create_task(commands(client, done))
    try:
        code = loop.run_until_complete(asyncio.wait_for(done, args.timeout))
    except asyncio.TimeoutError:
        emit({"event": "timeout"})
        code = 3
    reader.cancel()
    # Let the closing stream go out (bounded).
    try:
        loop.run_until_complete(asyncio.wait_for(asyncio.sleep(0.2), 1.0))
    except Exception:
        pass
    sys.exit(code)


if __name__ == "__main__":
    main()
