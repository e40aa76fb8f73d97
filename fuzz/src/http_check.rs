//! Reading back the HTTP responses the handshake writes, with an independent parser.

/// A response as an independent parser (httparse) reads it.
#[derive(Debug)]
pub struct ParsedResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lowercased) and values, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Everything after the head.
    pub body: Vec<u8>,
}

impl ParsedResponse {
    /// The values of header `name` (lowercase).
    pub fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| &value[..])
            .collect()
    }
}

/// Parses a complete HTTP/1.1 response and checks what every response roost writes must
/// satisfy: HTTP/1.1, a complete head, and a body exactly as long as `Content-Length` says
/// (no body and no `Content-Length` for 101, 204 and 304).
pub fn parse_response(bytes: &[u8]) -> ParsedResponse {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        other => panic!(
            "roost wrote an unreadable response ({other:?}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    assert_eq!(response.version, Some(1), "HTTP/1.1");
    let status = response.code.expect("a complete response has a status");
    let headers: Vec<(String, Vec<u8>)> = response
        .headers
        .iter()
        .map(|header| (header.name.to_ascii_lowercase(), header.value.to_vec()))
        .collect();
    let parsed = ParsedResponse {
        status,
        headers,
        body: bytes[length..].to_vec(),
    };
    let lengths = parsed.values("content-length");
    if matches!(status, 101 | 204 | 304) {
        assert!(lengths.is_empty(), "Content-Length on a {status}");
        assert!(parsed.body.is_empty(), "a body on a {status}");
    } else {
        assert_eq!(lengths.len(), 1, "one Content-Length on a {status}");
        let declared: usize = std::str::from_utf8(lengths[0])
            .ok()
            .and_then(|text| text.parse().ok())
            .expect("a numeric Content-Length");
        assert_eq!(
            declared,
            parsed.body.len(),
            "Content-Length matches the body"
        );
    }
    parsed
}
