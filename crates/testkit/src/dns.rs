//! A tiny DNS server on loopback UDP that answers SRV queries from a fixed
//! table (NXDOMAIN for anything else), for testing SRV discovery.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;

pub struct FakeDns {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `name` (without trailing dot) -> (priority, weight, port, target).
pub type SrvTable = HashMap<String, Vec<(u16, u16, u16, String)>>;

fn qname(msg: &[u8]) -> Option<(String, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            return Some((labels.join("."), pos + 1));
        }
        labels.push(String::from_utf8_lossy(msg.get(pos + 1..pos + 1 + len)?).into_owned());
        pos += 1 + len;
    }
}

fn answer(query: &[u8], table: &SrvTable) -> Option<Vec<u8>> {
    let (name, end) = qname(query)?;
    let question = query.get(12..end + 4)?;
    let records = table.get(&name.to_ascii_lowercase());
    let mut m = query.get(..12)?.to_vec();
    m[2] = 0x81; // response, recursion desired
    m[3] = if records.is_some() { 0x80 } else { 0x83 }; // RA, NOERROR / NXDOMAIN
    let count = records.map_or(0, Vec::len) as u16;
    m[4..6].copy_from_slice(&1u16.to_be_bytes());
    m[6..8].copy_from_slice(&count.to_be_bytes());
    m[8..12].fill(0);
    m.extend_from_slice(question);
    for (prio, weight, port, target) in records.into_iter().flatten() {
        m.extend_from_slice(&[0xc0, 12, 0, 33, 0, 1, 0, 0, 0, 30]);
        let mut rdata = Vec::new();
        rdata.extend_from_slice(&prio.to_be_bytes());
        rdata.extend_from_slice(&weight.to_be_bytes());
        rdata.extend_from_slice(&port.to_be_bytes());
        for l in target.trim_end_matches('.').split('.') {
            rdata.push(l.len() as u8);
            rdata.extend_from_slice(l.as_bytes());
        }
        rdata.push(0);
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(&rdata);
    }
    Some(m)
}

impl FakeDns {
    pub async fn start(table: SrvTable) -> std::io::Result<FakeDns> {
        let sock = UdpSocket::bind("127.0.0.1:0").await?;
        let addr = sock.local_addr()?;
        let table = Arc::new(table);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if let Some(reply) = answer(&buf[..n], &table) {
                    let _ = sock.send_to(&reply, from).await;
                }
            }
        });
        Ok(FakeDns { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}
