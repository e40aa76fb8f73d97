#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the handshake and extension targets into corpus/.

Each target's input starts with a fixed number of settings bytes (see the target's doc
comment); the rest is HTTP or header text. Run from fuzz/: `python3 seeds.py`. The seeds are
kept in corpus/ like every other input, so running this again is only needed to add seeds.
"""

import os

REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
)
OFFERS = [
    b"permessage-deflate; client_max_window_bits",
    b"permessage-deflate; client_max_window_bits, permessage-deflate; client_no_context_takeover; client_max_window_bits",
    b"permessage-deflate; server_max_window_bits=10; client_max_window_bits=12, permessage-deflate",
    b"permessage-deflate; server_max_window_bits=8, permessage-deflate; server_no_context_takeover",
    b"no-masking, permessage-deflate; client_max_window_bits=\"9\"",
    b"x-webkit-deflate-frame, permessage-deflate; unknown, permessage-deflate; server_max_window_bits=15",
]
# The accept value for the handshake_response target's fixed key "roost-fuzz-key!!".
ACCEPT = b"qrDf9AC59ACsViwhFsPhXsCuXEo="
RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n"
)
ANSWERS = [
    b"permessage-deflate",
    b"permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
    b"permessage-deflate; server_max_window_bits=9; client_no_context_takeover",
    b"no-masking",
    b"permessage-deflate, no-masking",
]


def write(target, name, data):
    directory = os.path.join("corpus", target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    request_settings = [bytes(8), bytes([3, 0, 0, 0, 0, 0, 0, 1]), bytes([0, 0, 0, 0, 0, 17, 0, 2])]
    for s, settings in enumerate(request_settings):
        write("handshake_request", f"rfc-{s}", settings + REQUEST + b"\r\n")
        for o, offer in enumerate(OFFERS):
            head = REQUEST + b"Sec-WebSocket-Extensions: " + offer + b"\r\n\r\n"
            write("handshake_request", f"offer-{s}-{o}", settings + head + b"\x81\x80\x01\x02\x03\x04")
    write("handshake_request", "post", bytes(8) + REQUEST.replace(b"GET", b"POST") + b"\r\n")
    write("handshake_request", "http10", bytes(8) + REQUEST.replace(b"1.1", b"1.0") + b"\r\n")
    write("handshake_request", "version8", bytes(8) + REQUEST.replace(b": 13", b": 8") + b"\r\n")
    write("handshake_request", "refuse", bytes([0, 0, 0, 0, 0, 0, 100, 3]) + REQUEST + b"\r\n")

    response_settings = [bytes(8), bytes([1, 0, 8 | 16, 0, 7, 0, 0, 0]), bytes([0, 0, 2 | 4, 1, 1, 0, 0, 0])]
    for s, settings in enumerate(response_settings):
        write("handshake_response", f"plain-{s}", settings + RESPONSE + b"\r\n")
        write("handshake_response", f"protocol-{s}", settings + RESPONSE + b"Sec-WebSocket-Protocol: chat\r\n\r\n\x81\x02hi")
        for a, answer in enumerate(ANSWERS):
            head = RESPONSE + b"Sec-WebSocket-Extensions: " + answer + b"\r\n\r\n"
            write("handshake_response", f"answer-{s}-{a}", settings + head)
    write("handshake_response", "refused", bytes(8) + b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n")

    extension_settings = [bytes(16), bytes([2, 1, 1, 0, 0, 0, 0, 0, 2 | 4 | 8, 2, 3, 0, 0, 0, 0, 1])]
    for s, settings in enumerate(extension_settings):
        for o, offer in enumerate(OFFERS + ANSWERS):
            write("extensions", f"offer-{s}-{o}", settings + offer)
        write("extensions", f"lines-{s}", settings + b"\n".join(OFFERS))


if __name__ == "__main__":
    main()
