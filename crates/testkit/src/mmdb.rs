//! Writes small MaxMind DB files (the `.mmdb` format of GeoLite2) for
//! GeoIP tests: an IPv4 search tree with 24-bit records, a data section of
//! `{"country": {"iso_code": ..}}` maps, and the metadata the readers check.
//! Only what the tests need; see the MaxMind DB format specification.

/// `networks`: (IPv4 address, prefix length, ISO country code).
pub fn country_db(networks: &[(&str, u8, &str)]) -> Vec<u8> {
    #[derive(Clone, Copy)]
    enum Rec {
        Empty,
        Node(usize),
        Data(usize),
    }
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    let mut data = Vec::new();
    for (addr, len, country) in networks {
        let ip: std::net::Ipv4Addr = addr.parse().expect("IPv4 address");
        let bits = u32::from(ip);
        let offset = data.len();
        data.extend(country_record(country));
        let mut node = 0;
        for depth in 0..*len {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth + 1 == *len {
                nodes[node][bit] = Rec::Data(offset);
            } else {
                node = match nodes[node][bit] {
                    Rec::Node(n) => n,
                    _ => {
                        nodes.push([Rec::Empty, Rec::Empty]);
                        let n = nodes.len() - 1;
                        nodes[node][bit] = Rec::Node(n);
                        n
                    }
                };
            }
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for node in &nodes {
        for rec in node {
            let v = match *rec {
                Rec::Empty => count,
                Rec::Node(n) => n,
                Rec::Data(off) => count + 16 + off,
            } as u32;
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend(data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    out.extend(metadata(count as u32));
    out
}

fn string(s: &str) -> Vec<u8> {
    assert!(s.len() < 29);
    let mut v = vec![0x40 | s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

fn uint(kind: u8, value: u32) -> Vec<u8> {
    let bytes: Vec<u8> = value
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut v = vec![(kind << 5) | bytes.len() as u8];
    v.extend(bytes);
    v
}

fn country_record(country: &str) -> Vec<u8> {
    let mut v = vec![0xE1];
    v.extend(string("country"));
    v.push(0xE1);
    v.extend(string("iso_code"));
    v.extend(string(country));
    v
}

fn metadata(node_count: u32) -> Vec<u8> {
    let mut v = vec![0xE0 | 9];
    v.extend(string("node_count"));
    v.extend(uint(6, node_count));
    v.extend(string("record_size"));
    v.extend(uint(5, 24));
    v.extend(string("ip_version"));
    v.extend(uint(5, 4));
    v.extend(string("database_type"));
    v.extend(string("Test-Country"));
    v.extend(string("languages"));
    v.extend([0x00, 0x04]); // empty array (extended type 11)
    v.extend(string("binary_format_major_version"));
    v.extend(uint(5, 2));
    v.extend(string("binary_format_minor_version"));
    v.extend(uint(5, 0));
    v.extend(string("build_epoch"));
    v.extend([0x04, 0x02]); // uint64 (extended type 9), 4 bytes
    v.extend(1_700_000_000u32.to_be_bytes());
    v.extend(string("description"));
    v.push(0xE0);
    v
}
