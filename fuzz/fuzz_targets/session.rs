//! Arbitrary client bytes through a whole pre-auth session, in memory: (a PROXY header from a
//! trusted peer,) the firewall, greeting, SSLRequest, HandshakeResponse, admission. The session
//! must end (ERR or close) without panicking and without waiting past its deadline; the paused
//! clock makes the deadline instant.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flexgate::backend::Backend;
use flexgate::config::{
    BackendAddress, BackendConfig, BackendTlsConfig, BackendTlsMode, ConnectionLimits, GreetingMode, SourceRule,
    TlsVersion,
};
use flexgate::events::ClientAddr;
use flexgate::firewall::{IpSet, Rules};
use flexgate::profile::ProfileCell;
use flexgate::protocol::{Capabilities, Greeting, MariaDbCapabilities};
use flexgate::session::{ListenerContext, Origin, run};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The session's peer; with `proxied`, a balancer whose PROXY header the session reads first.
fn context(require_tls: bool, proxied: bool) -> Arc<ListenerContext> {
    let cfg = BackendConfig {
        // Nothing listens on the discard port: an admitted client is refused quickly.
        address: BackendAddress::Tcp { host: "127.0.0.1".into(), port: 9 },
        connect_timeout: Duration::from_millis(100),
        tls: BackendTlsConfig { mode: BackendTlsMode::Disabled, ca: None, server_name: None },
        proxy_protocol: None,
    };
    // Everyone but one range, so that carried addresses are both allowed and refused.
    let net = |s: &str| s.parse::<ipnet::IpNet>().ok();
    let allow: Vec<SourceRule> = ["0.0.0.0/0", "::/0"].into_iter().filter_map(net).map(SourceRule::Net).collect();
    let deny: Vec<SourceRule> = ["203.0.113.0/24"].into_iter().filter_map(net).map(SourceRule::Net).collect();
    let profile = Arc::new(ProfileCell::default());
    profile.observe(&Greeting {
        server_version: b"10.11.19-MariaDB",
        connection_id: 1,
        auth_data_1: b"12345678",
        capabilities: Capabilities(0xf7fe | 0x000f_0000 | 0x0020_0000),
        charset: 45,
        status: 2,
        auth_data_len: 21,
        mariadb_capabilities: MariaDbCapabilities(0x1d),
        auth_data_2: b"abcdefghijkl\0",
        auth_plugin: Some(b"mysql_native_password"),
    });
    Arc::new(ListenerContext {
        listener: "fuzz".into(),
        handshake_timeout: Duration::from_secs(10),
        tls: None,
        min_tls: TlsVersion::Tls12,
        require_secure_transport: require_tls,
        greeting: GreetingMode::Flexgate,
        firewall: Rules::compile(&allow, &deny, &Default::default(), &mut |_| unreachable!("no hostnames")),
        limits: ConnectionLimits {
            max_connections: 10,
            max_connections_per_ip: None,
            max_preauth_per_ip: 16,
            connect_rate_per_ip: None,
        },
        proxy_protocol: proxied.then(|| IpSet::from_nets(net("192.0.2.0/24"))),
        gate: Arc::default(),
        generation: 1,
        backend: Arc::new(Backend::new(&cfg, None)),
        profile,
        registry: Arc::default(),
        events: flexgate::events::LoginEvents::default(),
        metrics: Default::default(),
        dials: Arc::default(),
        draining: Default::default(),
        key: Arc::default(),
        auth_mode: Default::default(),
        entra: None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else { return };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build() else {
        return;
    };
    rt.block_on(async {
        let ctx = context(mode & 1 == 1, mode & 4 == 4);
        let (mut client, server_side) = tokio::io::duplex(1 << 16);
        let origin = Origin {
            peer: ClientAddr::Tcp(SocketAddr::from(([192, 0, 2, 1], 4000))),
            local: Some(SocketAddr::from(([192, 0, 2, 2], 3306))),
        };
        let session = tokio::spawn(run(server_side, origin, ctx));
        let mut sink = Vec::new();
        let _ = client.write_all(input).await;
        if mode & 2 == 0 {
            let _ = client.shutdown().await; // half-close: the session sees EOF after the input
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut sink)).await;
        drop(client);
        assert!(tokio::time::timeout(Duration::from_secs(30), session).await.is_ok(), "session outlived its deadline");
    });
});
