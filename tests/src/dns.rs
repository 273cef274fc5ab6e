//! A DNS server for tests, written apart from husk's code so it checks
//! husk rather than agreeing with it: one zone of A records over UDP, every
//! other name NXDOMAIN (RFC 1035's message format, nothing more).

use std::net::{Ipv4Addr, UdpSocket};

const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// Serves `records` (fully qualified names without the final dot, lower
/// case) on `socket` until reading from it fails.
pub fn serve(socket: UdpSocket, records: &[(String, Ipv4Addr)]) {
    let mut buf = [0u8; 512];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        if let Some(reply) = answer(&buf[..n], records) {
            let _ = socket.send_to(&reply, from);
        }
    }
}

/// The reply to one query, or None for what is not a query.
pub fn answer(query: &[u8], records: &[(String, Ipv4Addr)]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // The question: labels up to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(at + 2)?, *query.get(at + 3)?]);
    let question = &query[12..at + 4];
    let name = labels.join(".");
    let known = records.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip);
    let mut reply = Vec::with_capacity(64);
    reply.extend_from_slice(&query[..2]);
    // QR, the query's RD, RA; NXDOMAIN for a name not in the zone.
    let rcode = if known.is_some() { 0 } else { 3 };
    reply.extend_from_slice(&[0x80 | (query[2] & 0x01), 0x80 | rcode]);
    let answers = u16::from(known.is_some() && qtype == TYPE_A && qclass == CLASS_IN);
    for count in [1, answers, 0, 0] {
        reply.extend_from_slice(&count.to_be_bytes());
    }
    reply.extend_from_slice(question);
    if let (1, Some(ip)) = (answers, known) {
        // The name as a pointer to the question's, at offset 12.
        reply.extend_from_slice(&[0xc0, 12]);
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&60u32.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    #[test]
    fn a_records_are_answered_and_other_names_are_nxdomain() {
        let zone = [(
            "files.outside.test".to_string(),
            Ipv4Addr::new(10, 91, 0, 2),
        )];
        let q = query("Files.outside.test", TYPE_A);
        let r = answer(&q, &zone).unwrap();
        assert_eq!(&r[..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0);
        assert_eq!(&r[6..8], &[0, 1], "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 91, 0, 2]);
        // AAAA of a known name: no error, no answer.
        let r = answer(&query("files.outside.test", 28), &zone).unwrap();
        assert_eq!((r[3] & 0x0f, r[7]), (0, 0));
        let r = answer(&query("files", TYPE_A), &zone).unwrap();
        assert_eq!(r[3] & 0x0f, 3);
        assert!(answer(&q[..5], &zone).is_none());
    }
}
