//! Minecraft Server List Ping (Java edition, 1.7+): handshake with next state 1, then
//! a status request; the answer is a JSON document. A server that accepts the TCP
//! connection but sends no status JSON is not ready.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Status responses larger than this are refused (the real ones are a few KB).
const MAX_PACKET: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SlpError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer the status request within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} answered with a malformed status: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
}

/// Writes a VarInt.
pub fn write_varint(out: &mut Vec<u8>, value: i32) {
    let mut v = value as u32;
    loop {
        if v & !0x7F == 0 {
            out.push(v as u8);
            return;
        }
        out.push(((v & 0x7F) | 0x80) as u8);
        v >>= 7;
    }
}

/// Reads a VarInt from a byte slice; returns (value, bytes used).
pub fn read_varint(buf: &[u8]) -> Option<(i32, usize)> {
    let mut value: u32 = 0;
    for (i, b) in buf.iter().enumerate().take(5) {
        value |= ((b & 0x7F) as u32) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value as i32, i + 1));
        }
    }
    None
}

async fn read_varint_async(stream: &mut TcpStream) -> std::io::Result<i32> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let b = stream.read_u8().await?;
        value |= ((b & 0x7F) as u32) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value as i32);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "VarInt longer than 5 bytes",
    ))
}

fn packet(id: i32, body: &[u8]) -> Vec<u8> {
    let mut inner = Vec::with_capacity(body.len() + 5);
    write_varint(&mut inner, id);
    inner.extend_from_slice(body);
    let mut out = Vec::with_capacity(inner.len() + 5);
    write_varint(&mut out, inner.len() as i32);
    out.extend_from_slice(&inner);
    out
}

/// Asks `addr` for its status; returns the status JSON.
pub async fn status(addr: SocketAddr, timeout: Duration) -> Result<serde_json::Value, SlpError> {
    match tokio::time::timeout(timeout, status_inner(addr)).await {
        Ok(r) => r,
        Err(_) => Err(SlpError::Timeout { addr, timeout }),
    }
}

async fn status_inner(addr: SocketAddr) -> Result<serde_json::Value, SlpError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| SlpError::Connect { addr, source })?;
    let io = |source| SlpError::Io { addr, source };
    let host = addr.ip().to_string();
    let mut hs = Vec::new();
    // Protocol version -1: "any", which status requests accept.
    write_varint(&mut hs, -1);
    write_varint(&mut hs, host.len() as i32);
    hs.extend_from_slice(host.as_bytes());
    hs.extend_from_slice(&addr.port().to_be_bytes());
    write_varint(&mut hs, 1);
    let mut out = packet(0x00, &hs);
    out.extend_from_slice(&packet(0x00, &[]));
    stream.write_all(&out).await.map_err(io)?;

    let len = read_varint_async(&mut stream).await.map_err(io)?;
    if len <= 0 || len as usize > MAX_PACKET {
        return Err(SlpError::Protocol {
            addr,
            reason: format!("packet length {len}"),
        });
    }
    let mut body = vec![0u8; len as usize];
    stream.read_exact(&mut body).await.map_err(io)?;
    let (id, used) = read_varint(&body).ok_or_else(|| SlpError::Protocol {
        addr,
        reason: "no packet id".into(),
    })?;
    if id != 0x00 {
        return Err(SlpError::Protocol {
            addr,
            reason: format!("packet id {id:#x}, expected 0x00"),
        });
    }
    let rest = &body[used..];
    let (slen, used2) = read_varint(rest).ok_or_else(|| SlpError::Protocol {
        addr,
        reason: "no string length".into(),
    })?;
    let text = rest
        .get(used2..used2 + slen.max(0) as usize)
        .ok_or_else(|| SlpError::Protocol {
            addr,
            reason: "truncated status string".into(),
        })?;
    let json: serde_json::Value = serde_json::from_slice(text).map_err(|e| SlpError::Protocol {
        addr,
        reason: format!("status is not JSON: {e}"),
    })?;
    if !json.is_object() {
        return Err(SlpError::Protocol {
            addr,
            reason: "status JSON is not an object".into(),
        });
    }
    Ok(json)
}

/// A TCP probe for games without a status protocol.
pub async fn tcp_accepts(addr: SocketAddr, timeout: Duration) -> Result<(), SlpError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(SlpError::Connect { addr, source }),
        Err(_) => Err(SlpError::Timeout { addr, timeout }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 255, 25565, 2_097_151, i32::MAX, -1] {
            let mut buf = Vec::new();
            write_varint(&mut buf, v);
            assert_eq!(read_varint(&buf), Some((v, buf.len())));
        }
        let mut buf = Vec::new();
        write_varint(&mut buf, -1);
        assert_eq!(buf, vec![0xff, 0xff, 0xff, 0xff, 0x0f]);
    }

    #[tokio::test]
    async fn a_bare_tcp_accept_is_not_a_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            // Accept and hold the connection without answering.
            let (_s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let err = status(addr, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, SlpError::Timeout { .. }), "{err}");
        assert!(tcp_accepts(addr, Duration::from_millis(200)).await.is_ok());
    }
}
