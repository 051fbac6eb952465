#!/usr/bin/env python3
"""A real SIP stack (pjsip, through pjsua2) as an LCS-side user, for tests/presence_pjsua.rs.

    pjsua_peer.py --listen PORT --cert FILE --key FILE --ca FILE --proxy URI --aor URI --log FILE
                  --nameserver IP      (a DNS server on port 53)

Mutual TLS only (TLS 1.2, the peer's certificate verified against the test CA both ways). It
listens on 127.0.0.1:PORT (the bridge's route to the partner edge) and sends everything through
`--proxy` (the bridge). Commands are JSON lines on stdin, events JSON lines on stdout:

  {"op": "watch", "uri": URI}          subscribe to URI's presence (a pjsua2 Buddy)
  {"op": "status", "online": BOOL, "activity": "away"|"busy"|"unknown", "note": TEXT}
                                       what the account publishes to its watchers (NOTIFY)
  {"op": "quit"}

  {"event": "ready"}
  {"event": "buddy", "uri", "online", "status_text", "activity", "note", "sub_state"}
  {"event": "watcher", "from"}         an incoming SUBSCRIBE, accepted (200)
  {"event": "error", "what"}
"""

import argparse
import json
import os
import select
import sys

import pjsua2 as pj


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


ACTIVITY = {
    "unknown": pj.PJRPID_ACTIVITY_UNKNOWN,
    "away": pj.PJRPID_ACTIVITY_AWAY,
    "busy": pj.PJRPID_ACTIVITY_BUSY,
}
ACTIVITY_NAME = {v: k for k, v in ACTIVITY.items()}


class Buddy(pj.Buddy):
    def onBuddyState(self):
        info = self.getInfo()
        pres = info.presStatus
        emit({
            "event": "buddy",
            "uri": info.uri,
            "online": pres.status == pj.PJSUA_BUDDY_STATUS_ONLINE,
            "status_text": pres.statusText,
            "activity": ACTIVITY_NAME.get(pres.activity, str(pres.activity)),
            "note": pres.note,
            "sub_state": info.subStateName,
        })


class Account(pj.Account):
    def onIncomingSubscribe(self, prm):
        emit({"event": "watcher", "from": prm.fromUri})
        prm.code = 200


def main():
    ap = argparse.ArgumentParser()
    for name in ("listen", "cert", "key", "ca", "proxy", "aor", "log", "nameserver"):
        ap.add_argument("--" + name, required=True)
    args = ap.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    # In-dialog requests go to the bridge's Contact (its public FQDN), found by SRV as a real
    # edge would; the test runs the DNS server.
    cfg.uaConfig.nameserver.append(args.nameserver)
    cfg.logConfig.level = 5
    cfg.logConfig.consoleLevel = 0
    cfg.logConfig.filename = args.log
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()

    tcfg = pj.TransportConfig()
    tcfg.port = int(args.listen)
    tcfg.boundAddress = "127.0.0.1"
    tcfg.publicAddress = "127.0.0.1"
    tls = tcfg.tlsConfig
    tls.CaListFile = args.ca
    tls.certFile = args.cert
    tls.privKeyFile = args.key
    tls.method = pj.PJSIP_TLSV1_2_METHOD
    tls.verifyServer = True
    tls.verifyClient = True
    tls.requireClientCert = True
    ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
    ep.libStart()

    acfg = pj.AccountConfig()
    acfg.idUri = args.aor
    acfg.regConfig.registerOnAdd = False
    acfg.sipConfig.proxies.append(args.proxy)
    acfg.presConfig.publishEnabled = False
    acc = Account()
    acc.create(acfg)
    buddies = []
    emit({"event": "ready"})

    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    pending = b""
    while True:
        ep.libHandleEvents(20)
        ready, _, _ = select.select([stdin], [], [], 0)
        if not ready:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if not line.strip():
                continue
            cmd = json.loads(line)
            try:
                if cmd["op"] == "watch":
                    bcfg = pj.BuddyConfig()
                    bcfg.uri = cmd["uri"]
                    bcfg.subscribe = True
                    b = Buddy()
                    b.create(acc, bcfg)
                    buddies.append(b)
                elif cmd["op"] == "status":
                    ps = pj.PresenceStatus()
                    online = cmd.get("online", True)
                    ps.status = pj.PJSUA_BUDDY_STATUS_ONLINE if online else pj.PJSUA_BUDDY_STATUS_OFFLINE
                    ps.activity = ACTIVITY[cmd.get("activity", "unknown")]
                    ps.note = cmd.get("note", "")
                    acc.setOnlineStatus(ps)
                elif cmd["op"] == "quit":
                    buddies.clear()
                    ep.libDestroy()
                    return
            except pj.Error as e:
                emit({"event": "error", "what": f"{cmd['op']}: {e.info()}"})
    ep.libDestroy()


if __name__ == "__main__":
    main()
