//! The edge against a real third-party SIP stack: Debian's SIPp over TCP behind socat's mutual
//! TLS (peers.md). SIPp sends OPTIONS and expects the profile's 200 with
//! `m=message 5060 sip/tcp *`; then a MESSAGE whose From domain the peer certificate does not
//! cover, and expects 403.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::pki::{Pki, pem};
use lcs_bridge::edge::server::EdgeSettings;
use lcs_bridge::edge::tls::TlsConfigs;
use lcs_bridge::sip::message::Limits;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const OPTIONS: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options to the edge">
  <send>
    <![CDATA[
      OPTIONS sip:sip.example.org SIP/2.0
      Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:sipp@contoso.com>;tag=[call_number]
      To: <sip:sip.example.org>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Content-Length: 0

    ]]>
  </send>
  <recv response="200">
    <action>
      <ereg regexp="m=message 5060 sip/tcp \*" search_in="body" check_it="true" assign_to="m"/>
    </action>
  </recv>
  <Reference variables="m"/>
  <send>
    <![CDATA[
      MESSAGE sip:alice@example.org SIP/2.0
      Via: SIP/2.0/TLS [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:mallory@fabrikam.com>;tag=[call_number]
      To: <sip:alice@example.org>
      Call-ID: [call_id]
      CSeq: 2 MESSAGE
      Content-Type: text/plain
      Content-Length: [len]

      hello
    ]]>
  </send>
  <recv response="403"/>
</scenario>
"#;

#[test]
fn sipp_behind_socat_gets_options_and_403() {
    let (Some(sipp), Some(socat)) = (common::require_peer("sipp"), common::require_peer("socat"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("Test federation CA");
    let peer = pki.leaf(&["sip.contoso.com", "contoso.com"], false);
    std::fs::write(dir.path().join("peer.pem"), pem(&peer)).unwrap();
    std::fs::write(
        dir.path().join("ca.crt"),
        common::pki::der_to_pem("CERTIFICATE", &pki.ca),
    )
    .unwrap();
    std::fs::write(dir.path().join("options.xml"), OPTIONS).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (chain, key) = pki.leaf(&["sip.example.org", "localhost", "127.0.0.1"], false);
    let settings = EdgeSettings::new(
        "127.0.0.1:0".parse().unwrap(),
        TlsConfigs::from_der(chain, key, vec![pki.ca.clone()]).unwrap(),
        common::edge::core_settings(),
        Limits::default(),
    );
    let edge = runtime.block_on(common::edge::start_answering(settings));

    let socat_port = common::free_port();
    let _socat = Killed(
        Command::new(socat)
            .arg(format!(
                "TCP-LISTEN:{socat_port},bind=127.0.0.1,reuseaddr,fork"
            ))
            .arg(format!(
                "OPENSSL:127.0.0.1:{},cert={},cafile={},verify=1",
                edge.local_addr.port(),
                dir.path().join("peer.pem").display(),
                dir.path().join("ca.crt").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait until socat listens.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", socat_port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "socat did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sipp_port = common::free_port();
    let out = common::run_with_timeout(
        Command::new(sipp)
            .arg(format!("127.0.0.1:{socat_port}"))
            .args(["-sf", &dir.path().join("options.xml").display().to_string()])
            .args(["-t", "t1", "-i", "127.0.0.1", "-p", &sipp_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "20", "-timeout_error"])
            .args([
                "-trace_err",
                "-error_file",
                &dir.path().join("err.log").display().to_string(),
            ])
            .current_dir(dir.path()),
        Duration::from_secs(40),
    );
    let errors = std::fs::read_to_string(dir.path().join("err.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "sipp failed ({:?}):\n{}\n{}\n{errors}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    edge.shutdown();
}
