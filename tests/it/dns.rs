//! A hostname in an allow-list, resolved by a DNS server on loopback whose answer the test
//! changes: the firewall follows the answer once its TTL runs out, without a reload.

use std::sync::{Arc, Mutex, PoisonError};

use hickory_resolver::proto::op::Message;
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::harness::*;

/// Answers every A query with the current addresses, TTL 1 s; AAAA queries get no records.
async fn dns_server(current: Arc<Mutex<Vec<std::net::Ipv4Addr>>>) -> std::net::SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = sock.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
            resp.metadata.recursion_desired = query.metadata.recursion_desired;
            resp.metadata.recursion_available = true;
            resp.add_queries(query.queries.iter().cloned());
            let ips = current.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for q in &query.queries {
                if q.query_type() == RecordType::A {
                    for ip in &ips {
                        resp.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(A(*ip))));
                    }
                }
            }
            let Ok(bytes) = resp.to_vec() else { continue };
            let _ = sock.send_to(&bytes, from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostname_rule_follows_its_dns_answer() {
    let db = mariadb();
    let current = Arc::new(Mutex::new(vec![std::net::Ipv4Addr::new(127, 0, 0, 7)]));
    let server = dns_server(current.clone()).await;
    let extra = format!("[dns]\nnameservers = [\"{server}\"]\nmin_ttl = \"1s\"\n");
    let proxy = ProxyConfig::to(db).listener("allow = [\"app.flexgate.test\"]\n").extra(&extra).start(&db.certs).await;
    // flexgate waited for the first answer before it opened the listener.
    assert_eq!(first_packet_from("127.0.0.7", proxy.addr).await, Ok(()));
    assert_eq!(first_packet_from("127.0.0.8", proxy.addr).await.map_err(|e| e.0), Err(1130));

    *current.lock().unwrap_or_else(PoisonError::into_inner) = vec![std::net::Ipv4Addr::new(127, 0, 0, 8)];
    eventually_async("the new answer picked up after its TTL", || async {
        first_packet_from("127.0.0.8", proxy.addr).await.is_ok()
    })
    .await;
    assert_eq!(first_packet_from("127.0.0.7", proxy.addr).await.map_err(|e| e.0), Err(1130), "the old address is out");
}
