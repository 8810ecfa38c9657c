//! DNS SRV lookups, for finding etcd servers the way upstream's
//! `discoverysrv` does (`_etcd-client-ssl._tcp.<domain>`, then
//! `_etcd-client._tcp.<domain>`). A small UDP client of the system's
//! resolvers (`/etc/resolv.conf`): the standard library resolves addresses
//! only, and a full resolver crate is a lot of code for one record type.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

/// One SRV answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

static NAMESERVERS: OnceLock<Vec<SocketAddr>> = OnceLock::new();

/// Use these name servers instead of `/etc/resolv.conf`'s (tests, which
/// run their own DNS server on loopback). Only the first call counts.
pub fn set_nameservers(servers: Vec<SocketAddr>) {
    let _ = NAMESERVERS.set(servers);
}

fn nameservers() -> Vec<SocketAddr> {
    if let Some(s) = NAMESERVERS.get() {
        return s.clone();
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let list: Vec<SocketAddr> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect();
    if list.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], 53))]
    } else {
        list
    }
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD, 1 question
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.push(0);
    q.extend_from_slice(&[0, 33, 0, 1]); // SRV, IN
    q
}

/// A (possibly compressed) name at `pos`; returns it and the position
/// after it in the original data.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..64 {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            return Some((labels.join("."), end.unwrap_or(pos + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos += 1 + len;
    }
    None
}

fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
}

/// The SRV records of a DNS answer to query `id`.
pub fn parse_answer(msg: &[u8], id: u16) -> Option<Vec<SrvRecord>> {
    if u16_at(msg, 0)? != id || msg.get(2)? & 0x80 == 0 {
        return None;
    }
    let rcode = msg.get(3)? & 0x0f;
    let (qd, an) = (u16_at(msg, 4)?, u16_at(msg, 6)?);
    match rcode {
        0 => {}
        // NXDOMAIN: the name has no records.
        3 => return Some(Vec::new()),
        // SERVFAIL, REFUSED, ...: ask the next name server.
        _ => return None,
    }
    if msg.get(2)? & 0x02 != 0 {
        // Truncated (no TCP fallback here): not a complete answer.
        return None;
    }
    let mut pos = 12;
    for _ in 0..qd {
        pos = read_name(msg, pos)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = read_name(msg, pos)?.1;
        let kind = u16_at(msg, pos)?;
        let len = u16_at(msg, pos + 8)? as usize;
        let data = pos + 10;
        if kind == 33 && len >= 7 {
            out.push(SrvRecord {
                priority: u16_at(msg, data)?,
                weight: u16_at(msg, data + 2)?,
                port: u16_at(msg, data + 4)?,
                target: read_name(msg, data + 6)?.0,
            });
        }
        pos = data + len;
    }
    Some(out)
}

/// The SRV records of `name`, by priority (then weight, heaviest first).
pub async fn lookup(name: &str) -> Result<Vec<SrvRecord>, String> {
    let mut last = format!("no name server answered for {name}");
    for server in nameservers() {
        let id: u16 = rand::random();
        let bind = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sock = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = sock.send_to(&query(id, name), server).await {
            last = format!("{server}: {e}");
            continue;
        }
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == server => match parse_answer(&buf[..n], id) {
                Some(mut records) => {
                    records.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
                    return Ok(records);
                }
                None => last = format!("{server}: unreadable answer"),
            },
            Ok(Ok(_)) => last = format!("{server}: answer from elsewhere"),
            Ok(Err(e)) => last = format!("{server}: {e}"),
            Err(_) => last = format!("{server}: timed out"),
        }
    }
    Err(last)
}

/// etcd client endpoints for `domain` as upstream finds them: the
/// `_etcd-client-ssl._tcp` records as `https://`, else `_etcd-client._tcp`
/// as `http://`; `service` adds `-<service>` to the record name.
pub async fn etcd_endpoints(domain: &str, service: &str) -> Result<Vec<String>, String> {
    let suffix = if service.is_empty() {
        String::new()
    } else {
        format!("-{service}")
    };
    let mut errors = Vec::new();
    for (scheme, name) in [
        ("https", format!("_etcd-client-ssl{suffix}._tcp.{domain}")),
        ("http", format!("_etcd-client{suffix}._tcp.{domain}")),
    ] {
        match lookup(&name).await {
            Ok(records) if !records.is_empty() => {
                return Ok(records
                    .into_iter()
                    .map(|r| format!("{scheme}://{}:{}", r.target.trim_end_matches('.'), r.port))
                    .collect())
            }
            Ok(_) => errors.push(format!("{name}: no records")),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a DNS server builds it (name compression included).
    pub fn answer(id: u16, qname: &str, records: &[(u16, u16, u16, &str)]) -> Vec<u8> {
        let q = query(id, qname);
        let mut m = q[..12].to_vec();
        m[2] = 0x81;
        m[3] = 0x80;
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        m.extend_from_slice(&q[12..]);
        for (prio, weight, port, target) in records {
            m.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 60]);
            let mut rdata = Vec::new();
            rdata.extend_from_slice(&prio.to_be_bytes());
            rdata.extend_from_slice(&weight.to_be_bytes());
            rdata.extend_from_slice(&port.to_be_bytes());
            for l in target.split('.') {
                rdata.push(l.len() as u8);
                rdata.extend_from_slice(l.as_bytes());
            }
            rdata.push(0);
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(&rdata);
        }
        m
    }

    #[test]
    fn parses_srv_answers() {
        let msg = answer(
            7,
            "_etcd-client._tcp.example.com",
            &[
                (10, 5, 2379, "etcd1.example.com"),
                (0, 0, 2380, "etcd2.example.com"),
            ],
        );
        let r = parse_answer(&msg, 7).expect("parses");
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            SrvRecord {
                priority: 10,
                weight: 5,
                port: 2379,
                target: "etcd1.example.com".into()
            }
        );
        assert_eq!(parse_answer(&msg, 8), None, "other id");
        for cut in 0..msg.len() {
            let _ = parse_answer(&msg[..cut], 7);
        }
        // A pointer loop ends.
        let mut looped = msg.clone();
        let n = looped.len();
        looped[n - 1] = 0xc0;
        let _ = parse_answer(&looped, 7);
    }
}
