//! The extension seam: what the opening handshake negotiated and how it changes framing.
//!
//! Two extensions exist: RFC 7692 permessage-deflate (claims RSV1) and the no-masking
//! extension (draft-damjanovic-websockets-nomasking-02, claims no bit). Parsing of the
//! `Sec-WebSocket-Extensions` header and the offer/accept logic live here too:
//! [`parse_extensions`], [`negotiate_server`], [`client_offer`] and [`negotiate_client`].
//!
//! # permessage-deflate negotiation (RFC 7692 §7.1)
//! The four parameters may each appear once. `server_max_window_bits` needs a value 8..=15;
//! `client_max_window_bits` may be valueless in an offer ("the client supports it") and needs
//! a value 8..=15 in a response; the two `*_no_context_takeover` parameters take no value.
//! Anything else makes that offer invalid.
//!
//! A server goes through the offers in order and accepts the first acceptable one. A
//! malformed offer (duplicate, unknown or badly valued parameter) is declined and the next one
//! tried (RFC 7692 §5); only a header that breaks the RFC 6455 §9.1 grammar fails the
//! handshake. The server honours what the client asks, then adds its own configuration:
//! `server_no_context_takeover` when configured, `client_no_context_takeover` when configured,
//! `server_max_window_bits` limited to the configured value, and `client_max_window_bits` when
//! configured below 15 and the client said it supports the parameter. It never answers with a
//! parameter the offer forbids.
//!
//! zlib cannot compress with an 8-bit window, so a configured 8 acts as 9 for roost's own
//! compressor and for what roost asks of the peer (its inflater uses 9 anyway), an offer that
//! demands `server_max_window_bits=8` is declined, and a client told to use
//! `client_max_window_bits=8` fails the handshake. See [`crate::deflate`] for the codec side.
//!
//! # no-masking
//! The token `no-masking` without parameters. A server accepts it only when
//! [`Config::no_masking`] is set; a client offers it only when it is set and the connection
//! is TLS, as the draft requires.

use std::mem;

use http::{HeaderMap, header::SEC_WEBSOCKET_EXTENSIONS};

use crate::{
    config::{Config, DeflateConfig},
    error::HandshakeError,
};

/// The extensions both ends agreed on; the handshake produces it, the connection obeys it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// permessage-deflate parameters, when negotiated.
    pub deflate: Option<DeflateParams>,
    /// Client frames travel unmasked.
    pub no_masking: bool,
}

/// Agreed permessage-deflate parameters (RFC 7692 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after each message.
    pub client_no_context_takeover: bool,
    /// The server compresses with at most this LZ77 window (8..=15).
    pub server_max_window_bits: u8,
    /// The client compresses with at most this LZ77 window (8..=15).
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

/// One extension from a `Sec-WebSocket-Extensions` header: its name and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, as sent.
    pub name: String,
    /// Parameters in order, each with its value if it had one (quoted values unescaped).
    pub params: Vec<(String, Option<String>)>,
}

/// Parses all `Sec-WebSocket-Extensions` header values (RFC 6455 §9.1 grammar:
/// comma-separated extensions, `;` parameters, token or quoted-string values).
///
/// Runs in time linear in the input. Empty list elements are skipped (RFC 7230 §7).
///
/// # Errors
/// [`HandshakeError::InvalidExtensions`] saying what was wrong and where.
pub fn parse_extensions<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<ExtensionOffer>, HandshakeError> {
    let mut offers = Vec::new();
    for value in values {
        Parser {
            bytes: value,
            pos: 0,
        }
        .list(&mut offers)
        .map_err(HandshakeError::InvalidExtensions)?;
    }
    Ok(offers)
}

/// Server: chooses from the client's offers (in the request headers) what to accept given
/// `config`; returns what was negotiated and the response header value (`None`: send no
/// `Sec-WebSocket-Extensions`).
///
/// # Errors
/// [`HandshakeError::InvalidExtensions`] (status 400) when a header value breaks the
/// RFC 6455 §9.1 grammar. Malformed permessage-deflate offers are declined, not errors.
pub fn negotiate_server(
    config: &Config,
    request_headers: &HeaderMap,
) -> Result<(Negotiated, Option<String>), HandshakeError> {
    let offers = parse_extensions(header_values(request_headers))?;
    let mut negotiated = Negotiated::default();
    let mut accepted = Vec::new();
    for offer in &offers {
        if offer.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
            if negotiated.deflate.is_none()
                && deflate_enabled(config)
                && let Some((params, answer)) = accept_deflate(config.deflate(), offer)
            {
                negotiated.deflate = Some(params);
                accepted.push(answer);
            }
        } else if offer.name.eq_ignore_ascii_case(NO_MASKING)
            && !negotiated.no_masking
            && config.no_masking()
            && offer.params.is_empty()
        {
            negotiated.no_masking = true;
            accepted.push(NO_MASKING.to_owned());
        }
    }
    let response = (!accepted.is_empty()).then(|| accepted.join(", "));
    Ok((negotiated, response))
}

/// Client: the `Sec-WebSocket-Extensions` value to offer (`None`: offer nothing).
///
/// `secure`: the connection is TLS; the no-masking extension may only be offered over TLS
/// (draft-damjanovic-websockets-nomasking-02).
pub fn client_offer(config: &Config, secure: bool) -> Option<String> {
    let mut offers = Vec::new();
    if deflate_enabled(config) {
        let offer = client_deflate_offer(config.deflate());
        offers.push(offer.render());
        // A fallback offer saying we can also work without context takeover: some servers
        // (Autobahn's among them) only ask a client for that when the offer says it is able.
        // The answer is checked against the first offer: an unrequested
        // client_no_context_takeover is always acceptable.
        if !offer.client_no_context_takeover {
            let fallback = DeflateRequest {
                client_no_context_takeover: true,
                ..offer
            };
            offers.push(fallback.render());
        }
    }
    if config.no_masking() && secure {
        offers.push(NO_MASKING.to_owned());
    }
    (!offers.is_empty()).then(|| offers.join(", "))
}

/// Client: validates the server's answer against what [`client_offer`] offered for the same
/// `config` and `secure`, and returns what was negotiated.
///
/// # Errors
/// - [`HandshakeError::UnofferedExtension`] for an extension that was not offered.
/// - [`HandshakeError::InvalidExtensions`] for a broken header, an extension accepted twice,
///   or parameters that are invalid or do not answer the offer (including
///   `client_max_window_bits=8`, which zlib cannot compress with).
pub fn negotiate_client(
    config: &Config,
    secure: bool,
    response_headers: &HeaderMap,
) -> Result<Negotiated, HandshakeError> {
    let answers = parse_extensions(header_values(response_headers))?;
    let mut negotiated = Negotiated::default();
    for answer in &answers {
        if answer.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
            if !deflate_enabled(config) {
                return Err(HandshakeError::UnofferedExtension(
                    PERMESSAGE_DEFLATE.to_owned(),
                ));
            }
            if negotiated.deflate.is_some() {
                return Err(invalid("permessage-deflate accepted twice".to_owned()));
            }
            let offered = client_deflate_offer(config.deflate());
            negotiated.deflate = Some(check_deflate_answer(&offered, answer)?);
        } else if answer.name.eq_ignore_ascii_case(NO_MASKING) {
            if !(config.no_masking() && secure) {
                return Err(HandshakeError::UnofferedExtension(NO_MASKING.to_owned()));
            }
            if negotiated.no_masking {
                return Err(invalid("no-masking accepted twice".to_owned()));
            }
            if !answer.params.is_empty() {
                return Err(invalid("no-masking takes no parameters".to_owned()));
            }
            negotiated.no_masking = true;
        } else {
            return Err(HandshakeError::UnofferedExtension(
                shown(&answer.name).to_owned(),
            ));
        }
    }
    Ok(negotiated)
}

/// The smallest window zlib can compress with; 8 is raised to it (see the module docs).
pub(crate) const MIN_ZLIB_WINDOW_BITS: u8 = 9;

/// The extension token of RFC 7692.
const PERMESSAGE_DEFLATE: &str = "permessage-deflate";
/// The extension token of draft-damjanovic-websockets-nomasking-02.
const NO_MASKING: &str = "no-masking";
/// The largest (and default) window RFC 7692 allows.
const MAX_WINDOW_BITS: u8 = 15;
/// Longest peer-chosen name quoted back in an error message.
const MAX_SHOWN: usize = 64;

fn deflate_enabled(config: &Config) -> bool {
    config.deflate().enabled
}

fn header_values(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|value| value.as_bytes())
}

fn invalid(why: String) -> HandshakeError {
    HandshakeError::InvalidExtensions(why)
}

/// A peer-chosen token cut to a length fit for an error message. Tokens are ASCII, so any
/// byte index is a character boundary.
fn shown(token: &str) -> &str {
    token.get(..MAX_SHOWN).unwrap_or(token)
}

/// A window size our side can use: 8 becomes 9, the smallest zlib can compress with.
fn usable_window_bits(bits: u8) -> u8 {
    bits.clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS)
}

/// The permessage-deflate parameters of one offer or response (RFC 7692 §7.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DeflateRequest {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value, which only an offer may do.
    client_max_window_bits: Option<Option<u8>>,
}

/// The four permessage-deflate parameters (RFC 7692 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeflateParam {
    ServerNoContextTakeover,
    ClientNoContextTakeover,
    ServerMaxWindowBits,
    ClientMaxWindowBits,
}

impl DeflateParam {
    const ALL: [DeflateParam; 4] = [
        DeflateParam::ServerNoContextTakeover,
        DeflateParam::ClientNoContextTakeover,
        DeflateParam::ServerMaxWindowBits,
        DeflateParam::ClientMaxWindowBits,
    ];

    fn name(self) -> &'static str {
        match self {
            DeflateParam::ServerNoContextTakeover => "server_no_context_takeover",
            DeflateParam::ClientNoContextTakeover => "client_no_context_takeover",
            DeflateParam::ServerMaxWindowBits => "server_max_window_bits",
            DeflateParam::ClientMaxWindowBits => "client_max_window_bits",
        }
    }
}

impl DeflateRequest {
    /// Reads and checks the parameters of one permessage-deflate element: each known
    /// parameter at most once, with a valid value or none as RFC 7692 §7.1 requires.
    fn parse(params: &[(String, Option<String>)]) -> Result<Self, String> {
        let mut request = DeflateRequest::default();
        let mut seen = [false; DeflateParam::ALL.len()];
        for (name, value) in params {
            let Some(index) = DeflateParam::ALL
                .iter()
                .position(|param| name.eq_ignore_ascii_case(param.name()))
            else {
                return Err(format!("unknown parameter {:?}", shown(name)));
            };
            let param = DeflateParam::ALL[index];
            if mem::replace(&mut seen[index], true) {
                return Err(format!("duplicate parameter {}", param.name()));
            }
            let value = value.as_deref();
            match param {
                DeflateParam::ServerNoContextTakeover | DeflateParam::ClientNoContextTakeover => {
                    if value.is_some() {
                        return Err(format!("{} takes no value", param.name()));
                    }
                    if param == DeflateParam::ServerNoContextTakeover {
                        request.server_no_context_takeover = true;
                    } else {
                        request.client_no_context_takeover = true;
                    }
                }
                DeflateParam::ServerMaxWindowBits => {
                    let value = value.ok_or("server_max_window_bits needs a value")?;
                    request.server_max_window_bits = Some(window_bits(param, value)?);
                }
                DeflateParam::ClientMaxWindowBits => {
                    let bits = value.map(|value| window_bits(param, value)).transpose()?;
                    request.client_max_window_bits = Some(bits);
                }
            }
        }
        Ok(request)
    }

    /// The header element for these parameters, in a fixed order.
    fn render(&self) -> String {
        let mut text = PERMESSAGE_DEFLATE.to_owned();
        if self.server_no_context_takeover {
            text.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            text.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            text.push_str(&format!("; server_max_window_bits={bits}"));
        }
        match self.client_max_window_bits {
            Some(Some(bits)) => text.push_str(&format!("; client_max_window_bits={bits}")),
            Some(None) => text.push_str("; client_max_window_bits"),
            None => {}
        }
        text
    }
}

/// A window-bits value: a decimal integer 8..=15 without leading zeroes (RFC 7692 §7.1.2).
fn window_bits(param: DeflateParam, value: &str) -> Result<u8, String> {
    let bits = match value {
        "8" => 8,
        "9" => 9,
        "10" => 10,
        "11" => 11,
        "12" => 12,
        "13" => 13,
        "14" => 14,
        "15" => 15,
        _ => {
            return Err(format!(
                "{} must be a number from 8 to 15, not {:?}",
                param.name(),
                shown(value)
            ));
        }
    };
    Ok(bits)
}

/// What a client configured with `config` offers.
fn client_deflate_offer(config: &DeflateConfig) -> DeflateRequest {
    let server_bits = usable_window_bits(config.server_max_window_bits);
    let client_bits = usable_window_bits(config.client_max_window_bits);
    DeflateRequest {
        server_no_context_takeover: config.server_no_context_takeover,
        client_no_context_takeover: config.client_no_context_takeover,
        server_max_window_bits: (server_bits < MAX_WINDOW_BITS).then_some(server_bits),
        client_max_window_bits: Some((client_bits < MAX_WINDOW_BITS).then_some(client_bits)),
    }
}

/// Server: the agreed parameters and response element for one permessage-deflate offer, or
/// `None` to decline it.
fn accept_deflate(
    config: &DeflateConfig,
    offer: &ExtensionOffer,
) -> Option<(DeflateParams, String)> {
    let requested = DeflateRequest::parse(&offer.params).ok()?;
    let server_bits = requested
        .server_max_window_bits
        .unwrap_or(MAX_WINDOW_BITS)
        .min(usable_window_bits(config.server_max_window_bits));
    if server_bits < MIN_ZLIB_WINDOW_BITS {
        // The client demands an 8-bit window, which zlib cannot compress with.
        return None;
    }
    // Asking for 8 would gain nothing: our inflater uses at least 9.
    let wanted_client_bits = usable_window_bits(config.client_max_window_bits);
    let client_bits = match requested.client_max_window_bits {
        // The client cannot be told a limit (RFC 7692 §7.1.2.2).
        None => MAX_WINDOW_BITS,
        Some(None) => wanted_client_bits,
        // The client's own value is a promise; it may only be lowered.
        Some(Some(offered)) => offered.min(wanted_client_bits),
    };
    let params = DeflateParams {
        server_no_context_takeover: requested.server_no_context_takeover
            || config.server_no_context_takeover,
        client_no_context_takeover: requested.client_no_context_takeover
            || config.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    };
    let answer = DeflateRequest {
        server_no_context_takeover: params.server_no_context_takeover,
        client_no_context_takeover: params.client_no_context_takeover,
        // An offered value must be answered (RFC 7692 §7.1.2.1); otherwise only a lower one.
        server_max_window_bits: (requested.server_max_window_bits.is_some()
            || server_bits < MAX_WINDOW_BITS)
            .then_some(server_bits),
        client_max_window_bits: (requested.client_max_window_bits.is_some()
            && client_bits < MAX_WINDOW_BITS)
            .then_some(Some(client_bits)),
    };
    Some((params, answer.render()))
}

/// Client: checks the server's permessage-deflate element against our `offered` one.
fn check_deflate_answer(
    offered: &DeflateRequest,
    answer: &ExtensionOffer,
) -> Result<DeflateParams, HandshakeError> {
    let answered = DeflateRequest::parse(&answer.params)
        .map_err(|why| invalid(format!("permessage-deflate response: {why}")))?;
    if offered.server_no_context_takeover && !answered.server_no_context_takeover {
        return Err(invalid(
            "the server did not accept the server_no_context_takeover offered".to_owned(),
        ));
    }
    let server_bits = match (
        offered.server_max_window_bits,
        answered.server_max_window_bits,
    ) {
        (Some(limit), None) => {
            return Err(invalid(format!(
                "the server did not accept the server_max_window_bits={limit} offered"
            )));
        }
        (Some(limit), Some(bits)) if bits > limit => {
            return Err(invalid(format!(
                "server_max_window_bits={bits} exceeds the {limit} offered"
            )));
        }
        (_, Some(bits)) => bits,
        (None, None) => MAX_WINDOW_BITS,
    };
    let offered_client_bits = offered.client_max_window_bits.flatten();
    let client_bits = match answered.client_max_window_bits {
        None => offered_client_bits.unwrap_or(MAX_WINDOW_BITS),
        Some(None) => {
            return Err(invalid(
                "client_max_window_bits needs a value in a response".to_owned(),
            ));
        }
        Some(Some(bits)) if bits < MIN_ZLIB_WINDOW_BITS => {
            return Err(invalid(format!(
                "the server asked for client_max_window_bits={bits}, but zlib cannot compress \
                 with a window smaller than {MIN_ZLIB_WINDOW_BITS} bits"
            )));
        }
        Some(Some(bits)) => match offered_client_bits {
            Some(limit) if bits > limit => {
                return Err(invalid(format!(
                    "client_max_window_bits={bits} exceeds the {limit} offered"
                )));
            }
            _ => bits,
        },
    };
    Ok(DeflateParams {
        server_no_context_takeover: answered.server_no_context_takeover,
        client_no_context_takeover: answered.client_no_context_takeover
            || offered.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    })
}

/// A single pass over one header value (RFC 6455 §9.1, with the implied optional whitespace
/// of RFC 2616 around separators).
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    /// `extension-list = 1#extension`; appends each extension to `offers`.
    fn list(&mut self, offers: &mut Vec<ExtensionOffer>) -> Result<(), String> {
        loop {
            self.skip_whitespace();
            match self.peek() {
                None => return Ok(()),
                Some(b',') => {
                    self.pos += 1;
                    continue;
                }
                Some(_) => {}
            }
            let name = self.token("an extension name")?;
            let mut params = Vec::new();
            loop {
                self.skip_whitespace();
                match self.peek() {
                    None => break,
                    Some(b',') => {
                        self.pos += 1;
                        break;
                    }
                    Some(b';') => {
                        self.pos += 1;
                        params.push(self.param()?);
                    }
                    Some(byte) => return Err(self.unexpected(byte, "',' or ';'")),
                }
            }
            offers.push(ExtensionOffer { name, params });
        }
    }

    /// `extension-param = token [ "=" (token | quoted-string) ]`, after its `;`.
    fn param(&mut self) -> Result<(String, Option<String>), String> {
        self.skip_whitespace();
        let name = self.token("a parameter name")?;
        self.skip_whitespace();
        if self.peek() != Some(b'=') {
            return Ok((name, None));
        }
        self.pos += 1;
        self.skip_whitespace();
        let value = if self.peek() == Some(b'"') {
            self.quoted_token()?
        } else {
            self.token("a parameter value")?
        };
        Ok((name, Some(value)))
    }

    fn token(&mut self, what: &str) -> Result<String, String> {
        let start = self.pos;
        while self.peek().is_some_and(is_token_byte) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(match self.peek() {
                Some(byte) => self.unexpected(byte, what),
                None => format!("expected {what} at the end of the value"),
            });
        }
        Ok(self.bytes[start..self.pos]
            .iter()
            .map(|&byte| char::from(byte))
            .collect())
    }

    /// A quoted-string whose unescaped content must be a token (RFC 6455 §9.1).
    fn quoted_token(&mut self) -> Result<String, String> {
        let open = self.pos;
        self.pos += 1;
        let mut value = String::new();
        loop {
            let Some(mut byte) = self.peek() else {
                return Err(format!("unterminated quoted string at byte {open}"));
            };
            self.pos += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(escaped) = self.peek() else {
                        return Err(format!("unterminated quoted string at byte {open}"));
                    };
                    self.pos += 1;
                    byte = escaped;
                }
                _ => {}
            }
            if !is_token_byte(byte) {
                return Err(format!(
                    "quoted value at byte {open} is not a token: it contains {}",
                    describe(byte)
                ));
            }
            value.push(char::from(byte));
        }
        if value.is_empty() {
            return Err(format!("empty quoted value at byte {open}"));
        }
        Ok(value)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn unexpected(&self, byte: u8, expected: &str) -> String {
        format!(
            "unexpected {} at byte {}, expected {expected}",
            describe(byte),
            self.pos
        )
    }
}

/// `tchar` of RFC 7230 §3.2.6.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

fn describe(byte: u8) -> String {
    if byte.is_ascii_graphic() || byte == b' ' {
        format!("{:?}", char::from(byte))
    } else {
        format!("byte {byte:#04x}")
    }
}

#[cfg(test)]
mod tests;
